"""``janusflow bench sample --compare-official`` for the image-token family (Janus-Pro): our
compiled AR sampler (``sample/ar_generate.sample_codes``) against the official generation loop
(deepseek-ai/Janus ``generation_inference.py``) on the same random weights, per compute dtype and
batch size, timed alternately on one machine.

The official side is built from the reference checkout (``--official-src DIR`` or an installed
``janus`` package): ``janus/models/vq_model.py`` is loaded as a file, the ``vision_head`` and
``MlpProjector`` classes are read out of ``modeling_vlm.py`` / ``projector.py`` (those modules import
torchvision / attrdict / a transformers-4 config API that this machine does not have), the LLM is
transformers' ``LlamaModel`` (what ``MultiModalityCausalLM`` builds). Every module is constructed
from the ``config.json`` our exporter writes and loaded strictly from our exported state dict.
The loop is the official one: cond/uncond rows interleaved (uncond = BOS, pads, last token, no
mask), KV cache, CFG on the logits, ``softmax(logits / T)`` + ``multinomial``, then
``decode_code``. bf16 is the script's ``.to(torch.bfloat16)``; ours casts the parameters to bf16 and
computes in bf16 with fp32 accumulation and fp32 logits.

Both sample ``num_tokens`` image tokens (default the full grid) from the same prompt. The two
loops draw different random numbers, so their codes differ; that both do the same work is
checked on the step-0 guided logits (same prompt, same weights: equal within fp32 error).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import os
import statistics
import time
import types
from functools import partial
from typing import Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from janusflow.checkpoint.hf import LAYOUTS, hf_config_from_model_config, model_key_map
from janusflow.checkpoint.torch_layout import export_state_dict
from janusflow.configs.schema import ModelConfig
from janusflow.models.layers import use_matmul
from janusflow.models.llm import use_attention
from janusflow.perf.bench_official import bf16_params, kernel_runs, reference_files, rel_l2
from janusflow.perf.bench_sample import random_model
from janusflow.sample.ar_generate import (OFFICIAL_CFG_WEIGHT, OFFICIAL_TEMPERATURE, decode_codes, image_keys,
                                          sample_codes, uncond_prompt_ids)
from janusflow.sample.generate import with_compute_dtype
from janusflow.sample.layout import decoding_config, decoding_layout

MODELS = os.path.join("janus", "models")
FILES = ("vq_model.py", "modeling_vlm.py", "projector.py")
# official checkpoint prefixes of the parts the generation loop runs -> official module
PARTS = {"language_model.model.": "llm", "gen_head.": "gen_head", "gen_embed.": "gen_embed",
         "gen_aligner.": "gen_aligner", "gen_vision_model.": "vq"}


class Params(dict):
    """The attribute-access dict the official constructors read their params from."""
    __getattr__ = dict.__getitem__


def _read_class(path: str, name: str, namespace: dict):
    node = next(n for n in ast.parse(open(path).read()).body if isinstance(n, ast.ClassDef) and n.name == name)
    exec(compile(ast.Module([node], []), path, "exec"), namespace)
    return namespace[name]


def load_official_ar(src: str | None = None):
    """(namespace with vq_model, vision_head, MlpProjector, None) or (None, why not). Only
    ``vq_model`` is needed for the VQ decode."""
    paths, why = reference_files(src, [os.path.join(MODELS, f) for f in FILES])
    if paths is None:
        return None, why
    vq_path, vlm_path, projector_path = paths
    import torch
    spec = importlib.util.spec_from_file_location("janus_official_vq_model", vq_path)
    vq = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vq)
    ns = {"torch": torch, "nn": torch.nn, "Tuple": Tuple, "Union": Union}
    return types.SimpleNamespace(
        vq_model=vq, vision_head=_read_class(vlm_path, "vision_head", ns),
        MlpProjector=_read_class(projector_path, "MlpProjector", ns)), None


def official_vq_args(v) -> tuple[dict, dict | None]:
    """(``vq_model.ModelArgs`` keywords, ``Encoder``/``Decoder`` keywords or None) of the
    official VQ model with our :class:`VQConfig` ``v``'s sizes. From our config, not from
    config.json, which writes the sizes only where they differ from VQ-16's; ``VQModel`` fixes
    the base width and block count to VQ-16's, so other sizes rebuild its encoder/decoder."""
    args = dict(codebook_size=v.codebook_size, codebook_embed_dim=v.embed_dim, z_channels=v.z_channels,
                encoder_ch_mult=list(v.channel_mult), decoder_ch_mult=list(v.channel_mult))
    if (v.base_channels, v.num_res_blocks) == (128, 2):
        return args, None
    return args, dict(ch=v.base_channels, ch_mult=list(v.channel_mult), num_res_blocks=v.num_res_blocks,
                      z_channels=v.z_channels)


class OfficialARLoop:
    """The official modules of ``generation_inference.py``, built from our exporter's config.json
    and loaded strictly from ``state_dict`` (official keys)."""

    def __init__(self, off, cfg: ModelConfig, state_dict: dict, dtype: str, decode: bool = True):
        import torch
        from transformers import LlamaConfig, LlamaModel
        self.torch, self.cfg = torch, cfg
        hf = hf_config_from_model_config(cfg)
        lang = {k: v for k, v in hf["language_config"].items() if k not in ("model_type", "torch_dtype")}
        g = hf["gen_vision_config"]["params"]
        self.mods = {"llm": LlamaModel(LlamaConfig(**lang)),
                     "gen_head": off.vision_head(Params(hf["gen_head_config"]["params"])),
                     "gen_embed": torch.nn.Embedding(g["image_token_size"], g["n_embed"]),
                     "gen_aligner": off.MlpProjector(Params(hf["gen_aligner_config"]["params"]))}
        if decode:
            args, kw = official_vq_args(cfg.vq)
            vq = off.vq_model.VQModel(off.vq_model.ModelArgs(**args))
            if kw is not None:
                vq.encoder, vq.decoder = off.vq_model.Encoder(**kw), off.vq_model.Decoder(**kw)
            self.mods["vq"] = vq
        self.dtype = getattr(torch, dtype)
        for prefix, name in PARTS.items():
            if name not in self.mods:
                continue
            sd = {k[len(prefix):]: torch.from_numpy(np.array(v, np.float32)) for k, v in state_dict.items()
                  if k.startswith(prefix)}
            self.mods[name].load_state_dict(sd, strict=True)
            self.mods[name].to(self.dtype).eval()
        self.embed_dim, self.grid = g["n_embed"], cfg.gen_grid

    def generate(self, ids: np.ndarray, num_tokens: int, cfg_weight: float, temperature: float, pad_id: int,
                 seed: int = 0):
        """ids (B, L) prompts -> (codes (B, num_tokens) int32, step-0 guided logits (B, V) fp32)."""
        torch, m = self.torch, self.mods
        gen = torch.Generator().manual_seed(seed)
        with torch.inference_mode():
            b = ids.shape[0]
            tokens = torch.from_numpy(np.repeat(np.asarray(ids, np.int64), 2, axis=0))
            tokens[1::2, 1:-1] = pad_id
            inputs = m["llm"].get_input_embeddings()(tokens)
            codes = torch.zeros((b, num_tokens), dtype=torch.int)
            past, first = None, None
            for i in range(num_tokens):
                out = m["llm"](inputs_embeds=inputs, use_cache=True, past_key_values=past)
                past = out.past_key_values
                logits = m["gen_head"](out.last_hidden_state[:, -1, :])
                logits = logits[1::2] + cfg_weight * (logits[0::2] - logits[1::2])
                if first is None:
                    first = logits.float().numpy()
                nxt = torch.multinomial(torch.softmax(logits / temperature, dim=-1), num_samples=1, generator=gen)
                codes[:, i] = nxt[:, 0]
                inputs = m["gen_aligner"](m["gen_embed"](nxt.repeat(1, 2).view(-1)))[:, None]
            return codes.numpy(), first

    def decode(self, codes: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            c = torch.from_numpy(np.asarray(codes, np.int64))
            dec = self.mods["vq"].decode_code(c, shape=[c.shape[0], self.embed_dim, self.grid, self.grid])
            dec = dec.float().permute(0, 2, 3, 1).numpy()
        return np.clip((dec + 1) / 2 * 255, 0, 255).astype(np.uint8)


@partial(jax.jit, static_argnames=("graphdef",))
def first_guided_logits(graphdef, state, ids, mask, cfg_weight, pad_id):
    """Our step-0 guided logits (B, V) fp32, from an uncached forward of the CFG rows."""
    model = nnx.merge(graphdef, state)
    lm = model.language_model
    b, length = ids.shape
    ids2 = jnp.stack([ids, uncond_prompt_ids(ids, mask, pad_id)], axis=1).reshape(2 * b, length)
    out = lm(lm.embed(ids2), attention_mask=jnp.repeat(mask, 2, axis=0))
    logits = model.image_logits(out.hidden[:, -1]).reshape(b, 2, -1)
    return logits[:, 1] + cfg_weight * (logits[:, 0] - logits[:, 1])


UNPACKED, UNFUSED = "_unpacked", "_unfused"


def run(cfg: ModelConfig, batches=(1,), dtypes=("float32", "bfloat16"), num_tokens: int | None = None,
        repeats: int = 3, prompt_len: int = 32, decode: bool = True, official_src: str | None = None,
        pad_id: int = 0, matmul_impls=None, log=print) -> dict:
    """``matmul_impls``: our sampler with each matmul kernel of the LLM and the generation head
    (``ModelConfig.matmul_impl``), timed alternately with the official loop in one run; "gemv"
    runs the LLM's attention on the decode-attention kernel too, as the sampler does on CPU
    (``sample/layout.decoding_model``), any other the config's attention. Default: the kernels
    the sampler picks here. With more than one, our timings are keyed ``ours_<impl>``.
    ``gemv_unpacked``: "gemv" with bf16 weights kept unpacked (``decoding_layout(pack=False)``),
    to time the 12-bit packing against it in one run; ``gemv_unfused``: "gemv" with each block's
    products and attention as separate calls (``attention_impl="cpu_decode"``), to time the
    one-call block (``"cpu_block"``) against them."""
    if matmul_impls is None:
        matmul_impls = (decoding_config(cfg).matmul_impl,)
    packs = [UNPACKED not in i for i in matmul_impls]
    fused = [UNFUSED not in i for i in matmul_impls]
    impls, _ = kernel_runs(cfg, [i.replace(UNPACKED, "").replace(UNFUSED, "") for i in matmul_impls])
    whos = ["ours"] if len(impls) == 1 else [f"ours_{i}" for i in matmul_impls]
    n = cfg.num_gen_tokens if num_tokens is None else num_tokens
    if not 1 <= n <= cfg.num_gen_tokens:
        raise ValueError(f"image tokens must be in 1..{cfg.num_gen_tokens}, got {n}")
    if prompt_len < 2 or prompt_len + n > cfg.llm.max_position_embeddings:
        raise ValueError(f"prompt_len must be in 2..{cfg.llm.max_position_embeddings - n}, got {prompt_len}")
    decode = decode and n == cfg.num_gen_tokens          # a partial grid has no image to decode
    w, temp = OFFICIAL_CFG_WEIGHT, OFFICIAL_TEMPERATURE
    off, why = load_official_ar(official_src)
    if off is not None and decode and cfg.vq.norm_groups != 32:
        raise ValueError(f"the official VQ tokenizer has GroupNorm(32); this config has vq.norm_groups="
                         f"{cfg.vq.norm_groups}")
    log(f"device {jax.devices()[0].device_kind} x {jax.device_count()}; LLM {cfg.llm.num_layers} layers x "
        f"{cfg.llm.hidden_size}, {n} of {cfg.num_gen_tokens} image tokens of a {cfg.vq.codebook_size}-entry "
        f"codebook; CFG {w} (2 rows per image), temperature {temp}, {prompt_len}-token prompt; "
        f"VQ decode {'timed' if decode else 'not timed'}; matmul {', '.join(matmul_impls)} (gemv: with the "
        f"decode-attention kernel)")
    if off is None:
        log(f"official loop unavailable: {why}; timing ours only")
    else:
        import torch
        log(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    # built per layer, the layout iter_generate_ar samples with (sample/layout.py): relaying a
    # stacked model out would hold a second copy of the weights beside the official model's
    cfg = dataclasses.replace(cfg, scan_layers=False)
    model32 = random_model(dataclasses.replace(cfg, dtype="float32"))
    state_dict = None
    if off is not None:
        key_map = {k: v for k, v in model_key_map(cfg).items() if k.startswith(tuple(PARTS))}
        state_dict = export_state_dict(model32, key_map)
        # tensors of the official layout that are no parameter of ours, as the exporter writes them
        state_dict.update({k: v for k, (_, v) in LAYOUTS[cfg.head.layout].extras().items()})
    out = {"rows": [], "official": off is not None, "why_not_official": why, "num_tokens": n, "decode": decode}
    for dtype in dtypes:
        ours, _ = with_compute_dtype(model32, cfg, dtype)
        if dtype == "bfloat16":
            ours = bf16_params(ours)
        graphs, layouts = {}, {}
        for who, impl, pack, fuse in zip(whos, impls, packs, fused):
            # the kernel is static: one graph each; the LLM and what each image token passes
            # (as JanusPro builds it for ModelConfig.matmul_impl), in the layout the sampler
            # decodes with for that kernel (gemv: dense weights (out, in), sample/layout.py),
            # made once per kernel and packing (runs that differ in attention share its arrays)
            if (impl, pack) not in layouts:
                view = nnx.merge(*nnx.split(ours))
                for part in (view.language_model, view.gen_aligner, view.gen_head):
                    use_matmul(part, impl)
                layouts[impl, pack] = decoding_layout(view, dataclasses.replace(cfg, matmul_impl=impl), pack=pack)[0]
            view = nnx.merge(*nnx.split(layouts[impl, pack]))
            use_attention(view.language_model, (("cpu_block" if fuse else "cpu_decode") if impl == "gemv"
                                                else cfg.attention_impl))
            graphs[who] = nnx.split(view)
        del layouts
        graphdef, state = graphs[whos[0]]
        official = OfficialARLoop(off, cfg, state_dict, dtype, decode) if off is not None else None
        for b in batches:
            ids = np.random.default_rng(b).integers(0, cfg.llm.vocab_size, (b, prompt_len), dtype=np.int32)
            rest = (jnp.asarray(ids), jnp.ones((b, prompt_len), bool), image_keys(0, range(b)),
                    jnp.float32(w), jnp.float32(temp), jnp.int32(pad_id))
            row = {"dtype": dtype, "batch": b}
            calls, dec_calls, step0 = {}, {}, {}
            for who, (g, st) in graphs.items():
                t0 = time.perf_counter()
                prog = sample_codes.lower(g, st, *rest, num_tokens=n).compile()
                row[f"{who}_compile_s"] = time.perf_counter() - t0
                codes = jax.block_until_ready(prog(st, *rest))                            # warm-up
                calls[who] = partial(lambda p, st: jax.block_until_ready(p(st, *rest)), prog, st)
                step0[who] = np.asarray(first_guided_logits(g, st, rest[0], rest[1], rest[3], rest[5]))
            for who in whos[1:]:
                row[f"{who}_step0_rel_diff_vs_{whos[0]}"] = rel_l2(step0[who], step0[whos[0]])
            if decode:
                # the decoder has no LLM matmul: timed once, with the first kernel's run
                dprog = decode_codes.lower(graphdef, state, codes).compile()
                dec_calls[whos[0]] = lambda: jax.block_until_ready(dprog(state, codes))
                dec_calls[whos[0]]()
            if official is not None:
                ocodes, logits0 = official.generate(ids, n, w, temp, pad_id)              # warm-up
                ours0 = step0[whos[0]]
                row["step0_logits_rel_diff"] = rel_l2(ours0, logits0)
                row["step0_argmax_agree"] = float(np.mean(ours0.argmax(-1) == logits0.argmax(-1)))
                calls["official"] = lambda: official.generate(ids, n, w, temp, pad_id)
                if decode:
                    dec_calls["official"] = lambda: official.decode(ocodes)
                    official.decode(ocodes)
            times = {who: [] for who in calls}
            dtimes = {who: [] for who in dec_calls}
            for r in range(repeats):
                for who in (list(calls) if r % 2 == 0 else list(calls)[::-1]):
                    t0 = time.perf_counter()
                    calls[who]()
                    times[who].append(time.perf_counter() - t0)
                    if who in dec_calls:
                        t0 = time.perf_counter()
                        dec_calls[who]()
                        dtimes[who].append(time.perf_counter() - t0)
            for who in calls:
                tok = statistics.median(times[who])
                dwho = who if who == "official" else whos[0]
                dec = statistics.median(dtimes[dwho]) if dtimes.get(dwho) else 0.0
                row.update({f"{who}_tokens_s": tok, f"{who}_samples": times[who],
                            f"{who}_ms_per_token": 1e3 * tok / n, f"{who}_decode_s": dec,
                            f"{who}_s_per_image": (tok + dec) / b})
            msg = f"{dtype:8s} batch {b}: " + ", ".join(
                f"{who} {row[f'{who}_s_per_image']:.3f} s/image ({row[f'{who}_ms_per_token']:.2f} ms/token, "
                f"decode {row[f'{who}_decode_s']:.3f} s)" for who in whos)
            if official is not None:
                ratios = []
                for who in whos:
                    tail = "" if who == "ours" else f"_{who}"
                    row[f"speedup{tail}"] = row["official_s_per_image"] / row[f"{who}_s_per_image"]
                    row[f"speedup_tokens{tail}"] = row["official_tokens_s"] / row[f"{who}_tokens_s"]
                    ratios.append(f"{who} {row[f'speedup{tail}']:.2f}x faster per image, "
                                  f"{row[f'speedup_tokens{tail}']:.2f}x on the tokens")
                msg += (f", official {row['official_s_per_image']:.3f} s/image ({row['official_ms_per_token']:.2f} "
                        f"ms/token, decode {row['official_decode_s']:.3f} s) -> " + ", ".join(ratios)
                        + f" (medians of {repeats} alternating runs); step-0 guided logits differ by "
                        f"{100 * row['step0_logits_rel_diff']:.2g}% (relative L2), argmax agrees on "
                        f"{100 * row['step0_argmax_agree']:.0f}% of images")
            msg += "".join(f"; {k.replace('_', ' ')} {100 * v:.2g}%" for k, v in row.items() if "_vs_" in k)
            log(msg)
            out["rows"].append(row)
        del official
    return out
