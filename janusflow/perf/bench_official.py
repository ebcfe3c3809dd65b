"""``janusflow bench sample --compare-official``: our compiled sampler against the official
JanusFlow sampling loop (PyTorch: deepseek-ai/Janus README / ``demo/app_janusflow.py``) on the
same random weights, per compute dtype and batch size, timed alternately on one machine.

The official loop is built from the reference code when it is available: an installed
``janus`` package, or a checkout given with ``--official-src`` (only ``janus/janusflow/models/
uvit.py`` is loaded, plus transformers' ``LlamaModel``); torch, transformers and diffusers must
be installed. Without them only our sampler is timed, and the report says so.

What each side runs: ours is ``generate.integrate`` (prompt KV cache, CFG rows, Euler);
the official loop is the README's: every step runs the whole [prompt, t_emb, image] sequence
through the LLM (its KV-cache copy iterates over a list it has just emptied, so no cache is
reused). bf16 is the demo's ``model.to(torch.bfloat16)``; ours casts the parameters to bf16 and
computes in bf16 (z and t stay fp32 in ours, bf16 in theirs). Seconds per step = one whole
sampling call (prompt included) / steps; medians of ``repeats`` alternating runs.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import statistics
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from janusflow.perf import peak as perf
from janusflow.perf.bench_sample import random_model
from janusflow.checkpoint.hf import hf_config_from_model_config, janusflow_key_map
from janusflow.checkpoint.torch_layout import export_state_dict
from janusflow.configs.schema import ModelConfig
from janusflow.models.layers import use_matmul
from janusflow.sample.generate import initial_noise, integrate, with_compute_dtype

UVIT = os.path.join("janus", "janusflow", "models", "uvit.py")
# official checkpoint prefixes of the parts the sampling loop runs -> our module
PARTS = {"language_model.model.": "llm", "vision_gen_enc_model.": "enc", "vision_gen_dec_model.": "dec",
         "vision_gen_enc_aligner.": "enc_aligner", "vision_gen_dec_aligner_norm.": "dec_norm",
         "vision_gen_dec_aligner.": "dec_aligner"}


def reference_files(src: str | None, rel_paths, deps=("torch", "transformers")):
    """Paths of ``rel_paths`` (relative to a deepseek-ai/Janus checkout) under ``src`` or the
    installed ``janus`` package, and None; or None and why they are not to be had."""
    for dep in deps:
        if importlib.util.find_spec(dep) is None:
            return None, f"{dep} is not installed"
    if src:
        root = src
    else:
        spec = importlib.util.find_spec("janus")
        if spec is None or not spec.submodule_search_locations:
            return None, "the reference code (deepseek-ai/Janus) is not installed; pass --official-src DIR"
        root = os.path.dirname(list(spec.submodule_search_locations)[0])
    paths = [os.path.join(root, r) for r in rel_paths]
    missing = [r for r, p in zip(rel_paths, paths) if not os.path.isfile(p)]
    if missing:
        return None, f"no {', '.join(missing)} under {src or 'the installed janus package'}"
    return paths, None


def load_official_uvit(src: str | None = None):
    """(module with ShallowUViTEncoder/Decoder, None) or (None, why not)."""
    paths, why = reference_files(src, [UVIT], ("torch", "transformers", "diffusers"))
    if paths is None:
        return None, why
    path = paths[0]
    # uvit.py imports torchvision at module level but none of its classes use it; diffusers and
    # transformers (which probe for torchvision) are imported first: only uvit.py sees the stand-in
    importlib.import_module("diffusers.models.embeddings")
    importlib.import_module("transformers.models.llama.modeling_llama")
    stub = importlib.util.find_spec("torchvision") is None
    if stub:
        sys.modules["torchvision"] = types.ModuleType("torchvision")
        sys.modules["torchvision.utils"] = types.ModuleType("torchvision.utils")
    try:
        spec = importlib.util.spec_from_file_location("janus_official_uvit", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        if stub:
            del sys.modules["torchvision"], sys.modules["torchvision.utils"]
    return mod, None


class OfficialLoop:
    """The official modules of the sampling loop, loaded with ``state_dict`` (official keys)."""

    def __init__(self, uvit, cfg: ModelConfig, state_dict: dict, dtype: str):
        import torch
        from transformers import LlamaConfig, LlamaModel
        from transformers.models.llama.modeling_llama import LlamaRMSNorm
        self.torch, self.cfg = torch, cfg
        hf = hf_config_from_model_config(cfg)
        lang = {k: v for k, v in hf["language_config"].items() if k not in ("model_type", "torch_dtype")}
        d, c = cfg.llm.hidden_size, cfg.gen_codec.channels
        self.mods = {
            "llm": LlamaModel(LlamaConfig(**lang)),
            "enc": uvit.ShallowUViTEncoder(**hf["vision_gen_enc_config"]["params"]),
            "dec": uvit.ShallowUViTDecoder(**hf["vision_gen_dec_config"]["params"]),
            "enc_aligner": torch.nn.Linear(c, d), "dec_norm": LlamaRMSNorm(d, eps=cfg.llm.rms_norm_eps),
            "dec_aligner": torch.nn.Linear(d, c)}
        tdtype = getattr(torch, dtype)
        for prefix, name in PARTS.items():
            sd = {k[len(prefix):]: torch.from_numpy(np.array(v, np.float32)) for k, v in state_dict.items()
                  if k.startswith(prefix) and not any(k.startswith(p) for p in PARTS if len(p) > len(prefix))}
            self.mods[name].load_state_dict(sd, strict=True)
            self.mods[name].to(tdtype).eval()
        self.dtype = tdtype

    def generate(self, prompt_embeds: np.ndarray, z0_nhwc: np.ndarray, steps: int, cfg_weight: float):
        """prompt_embeds (B, L, D) without the generation tag; z0 (B, h, w, C) -> z (B, h, w, C)."""
        torch, m = self.torch, self.mods
        with torch.inference_mode():
            b, length = prompt_embeds.shape[:2]
            emb = torch.from_numpy(np.array(prompt_embeds, np.float32)).to(self.dtype)
            emb = torch.cat([emb, emb], dim=0)
            z = torch.from_numpy(np.array(z0_nhwc, np.float32)).permute(0, 3, 1, 2).to(self.dtype)
            n = self.cfg.num_gen_tokens
            mask = torch.ones((2 * b, length + 1 + n), dtype=torch.int)
            mask[b:, 1:length] = 0                       # unconditional rows keep the first token
            dt = torch.zeros_like(z) + 1.0 / steps
            for step in range(steps):
                z_in = torch.cat([z, z], dim=0)
                t = torch.tensor([step / steps * 1000.0] * z_in.shape[0]).to(dt)
                z_emb, t_emb, hs = m["enc"](z_in, t)
                z_emb = m["enc_aligner"](z_emb.view(z_emb.shape[0], z_emb.shape[1], -1).permute(0, 2, 1))
                seq = torch.cat([emb, t_emb.unsqueeze(1), z_emb], dim=1)
                h = m["llm"](inputs_embeds=seq, attention_mask=mask, use_cache=False).last_hidden_state
                h = m["dec_aligner"](m["dec_norm"](h[:, -n:, :]))
                g = self.cfg.gen_grid
                h = h.reshape(z_emb.shape[0], g, g, -1).permute(0, 3, 1, 2)
                v = m["dec"](h, hs, t_emb)
                v_cond, v_uncond = torch.chunk(v, 2)
                z = z + dt * (cfg_weight * v_cond - (cfg_weight - 1.0) * v_uncond)
            return z.float().permute(0, 2, 3, 1).numpy()


def rel_l2(a, b) -> float:
    """Relative L2 distance of a from b."""
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


def bf16_params(model):
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, jax.tree.map(lambda a: a.astype(jnp.bfloat16), state))


def kernel_runs(cfg: ModelConfig, matmul_impls=None) -> tuple[tuple, list]:
    """(LLM matmul kernels to time ours with, default the config's; the name each run's timings
    are keyed by: ``ours`` alone, else ``ours_<impl>``). Unknown names raise as the config does."""
    impls = tuple(matmul_impls or (cfg.matmul_impl,))
    for impl in impls:
        dataclasses.replace(cfg, matmul_impl=impl)
    return impls, (["ours"] if len(impls) == 1 else [f"ours_{i}" for i in impls])


def run(cfg: ModelConfig, batches=(1, 8), dtypes=("float32", "bfloat16"), steps: int = 4,
        repeats: int = 3, prompt_len: int = 24, cfg_weight: float = 2.0,
        official_src: str | None = None, matmul_impls=None, log=print) -> dict:
    """``matmul_impls`` (default: the config's): our sampler with each LLM matmul kernel
    (``ModelConfig.matmul_impl``), timed alternately with the official loop in one run. With
    more than one, our timings are keyed ``ours_<impl>``."""
    impls, whos = kernel_runs(cfg, matmul_impls)
    uvit, why = load_official_uvit(official_src)
    log(f"device {jax.devices()[0].device_kind} x {jax.device_count()}; LLM {cfg.llm.num_layers} layers x "
        f"{cfg.llm.hidden_size}, gen codec {cfg.gen_codec.channels} ch, {cfg.num_gen_tokens} image tokens; "
        f"{steps} Euler steps, CFG {cfg_weight}, {prompt_len}-token prompt; LLM matmul {', '.join(impls)}")
    if uvit is None:
        log(f"official loop unavailable: {why}; timing ours only")
    peaks = perf.peaks_per_device()
    log("peaks: " + ", ".join(f"{d} {p / 1e9:.0f} GFLOP/s" for d, (p, _) in peaks.items()))
    model32 = random_model(dataclasses.replace(cfg, dtype="float32"))
    state_dict = None
    if uvit is not None:
        key_map = {k: v for k, v in janusflow_key_map(cfg).items() if k.startswith(tuple(PARTS))}
        state_dict = export_state_dict(model32, key_map)
    table = np.asarray(model32.language_model.embed_tokens[...])
    first = {}                                  # (who, batch) -> latents of the first dtype
    out = {"rows": [], "official": uvit is not None, "why_not_official": why,
           "peaks": {d: p for d, (p, _) in peaks.items()}}
    for dtype in dtypes:
        ours, ocfg = with_compute_dtype(model32, cfg, dtype)
        if dtype == "bfloat16":
            ours = bf16_params(ours)
        graphdefs = {}
        for who, impl in zip(whos, impls):
            use_matmul(ours.language_model, impl)       # the kernel is static: one graph each
            graphdefs[who], state = nnx.split(ours)
        official = OfficialLoop(uvit, cfg, state_dict, dtype) if uvit is not None else None
        for b in batches:
            # the same prompts and noise for every dtype: their latents are compared below
            ids = np.random.default_rng(b).integers(0, cfg.llm.vocab_size, (b, prompt_len), dtype=np.int32)
            mask = jnp.ones((b, prompt_len), bool)
            z0 = initial_noise(cfg, 0, range(b))
            w = jnp.float32(cfg_weight)
            compiled = {who: integrate.lower(g, state, jnp.asarray(ids), mask, z0, w, steps=steps,
                                             solver="euler", use_cache=True, mesh=None).compile()
                        for who, g in graphdefs.items()}
            z = {who: np.asarray(c(state, jnp.asarray(ids), mask, z0, w)) for who, c in compiled.items()}  # warm-up
            times = {who: [] for who in whos + ["official"]}
            row = {"dtype": dtype, "batch": b}
            if official is not None:
                z["official"] = official.generate(table[ids], np.asarray(z0), steps, cfg_weight)  # warm-up
                row["latent_rel_diff"] = rel_l2(z[whos[0]], z["official"])
            for who in whos[1:]:
                row[f"{who}_rel_diff_vs_{whos[0]}"] = rel_l2(z[who], z[whos[0]])
            for who, zw in z.items():
                first.setdefault((who, b), (dtype, zw))
                if first[(who, b)][0] != dtype:
                    row[f"{who}_rel_diff_vs_{first[(who, b)][0]}"] = rel_l2(zw, first[(who, b)][1])
            for r in range(repeats):
                order = list(times) if r % 2 == 0 else list(times)[::-1]
                for who in order:
                    if who == "official" and official is None:
                        continue
                    t0 = time.perf_counter()
                    if who == "official":
                        official.generate(table[ids], np.asarray(z0), steps, cfg_weight)
                    else:
                        jax.block_until_ready(compiled[who](state, jnp.asarray(ids), mask, z0, w))
                    times[who].append((time.perf_counter() - t0) / steps)
            for who in times:
                if times[who]:
                    row[f"{who}_s_per_step"] = statistics.median(times[who])
                    row[f"{who}_samples"] = times[who]
            msg = f"{dtype:8s} batch {b}: " + ", ".join(f"{who} {row[f'{who}_s_per_step']:.3f}"
                                                        for who in whos) + " s/step"
            if official is not None:
                for who in whos:
                    key = "speedup" if who == "ours" else f"speedup_{who}"
                    row[key] = row["official_s_per_step"] / row[f"{who}_s_per_step"]
                msg += (f", official {row['official_s_per_step']:.3f} s/step -> "
                        + ", ".join(f"{who} {row['speedup' if who == 'ours' else 'speedup_' + who]:.2f}x"
                                    for who in whos)
                        + f" faster (medians of {repeats} alternating runs); latents differ by "
                        f"{100 * row['latent_rel_diff']:.2f}% (relative L2)")
            msg += "".join(f"; {k.replace('_', ' ')} {100 * v:.2f}%" for k, v in row.items() if "_vs_" in k)
            log(msg)
            out["rows"].append(row)
    return out
