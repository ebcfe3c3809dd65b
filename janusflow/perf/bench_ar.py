"""``janusflow bench sample`` for a model that generates VQ image tokens (Janus-Pro): seconds
per image and per image token of the compiled AR sampler (``sample/ar_generate.py``: prompt
prefilled once into the KV cache, one loop over the image tokens, CFG rows), and of the VQ
decode, on random weights (the timing does not depend on them). Medians of ``repeats`` runs.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from janusflow.configs.schema import ModelConfig
from janusflow.perf import peak as perf
from janusflow.perf.bench_sample import random_model
from janusflow.sample.ar_generate import OFFICIAL_CFG_WEIGHT, decode_codes, image_keys, sample_codes
from janusflow.sample.layout import decoding_config, decoding_model


def compiled_sampler(cfg: ModelConfig, model, batch: int, prompt_len: int):
    """(compiled program, its arguments, compile seconds) of one sampling call of ``batch``
    images for a random ``prompt_len``-token prompt, CFG weight 5, temperature 1."""
    graphdef, state = nnx.split(decoding_model(model, cfg)[0])        # as iter_generate_ar samples
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(0, cfg.llm.vocab_size, (batch, prompt_len), dtype=np.int32))
    args = (state, ids, jnp.ones((batch, prompt_len), bool), image_keys(0, range(batch)),
            jnp.float32(OFFICIAL_CFG_WEIGHT), jnp.float32(1.0), jnp.int32(0))
    t0 = time.perf_counter()
    compiled = sample_codes.lower(graphdef, *args, num_tokens=cfg.num_gen_tokens).compile()
    return compiled, args, time.perf_counter() - t0


def run(cfg: ModelConfig, batch: int = 1, repeats: int = 3, prompt_len: int = 32, decode: bool = True,
        log=print) -> dict:
    if prompt_len < 2 or prompt_len + cfg.num_gen_tokens > cfg.llm.max_position_embeddings:
        raise ValueError(f"prompt_len must be in 2..{cfg.llm.max_position_embeddings - cfg.num_gen_tokens}, "
                         f"got {prompt_len}")
    n = cfg.num_gen_tokens
    log(f"device {jax.devices()[0].device_kind} x {jax.device_count()}; compute dtype {cfg.dtype}, "
        f"params {cfg.param_dtype}; LLM {cfg.llm.num_layers} layers x {cfg.llm.hidden_size}; {n} image tokens "
        f"of a {cfg.vq.codebook_size}-entry codebook; CFG (2 rows per image), {prompt_len}-token prompt")
    dcfg = decoding_config(cfg)
    log(f"token loop as the sampler runs it: products {dcfg.matmul_impl}, attention {dcfg.attention_impl}")
    t0 = time.perf_counter()
    model = random_model(cfg)
    log(f"random weights in {time.perf_counter() - t0:.1f} s")
    compiled, args, compile_s = compiled_sampler(cfg, model, batch, prompt_len)
    med, samples = perf.timed(compiled, *args, repeats=repeats, warmup=1)
    out = {"batch": batch, "prompt_len": prompt_len, "num_tokens": n, "repeats": repeats,
           "sample_s": med, "samples_s": samples, "per_token_s": med / n, "compile_s": compile_s}
    log(f"AR sampler: {med:.3f} s per call of {batch} image(s) median ({', '.join(f'{s:.3f}' for s in samples)} s), "
        f"{1e3 * med / n:.2f} ms per image token; compile {compile_s:.1f} s")
    decode_s = 0.0
    if decode:
        graphdef, state = nnx.split(model)
        codes = jnp.asarray(np.random.default_rng(1).integers(0, cfg.vq.codebook_size, (batch, n), dtype=np.int32))
        prog = decode_codes.lower(graphdef, state, codes).compile()
        decode_s, _ = perf.timed(prog, state, codes, repeats=repeats, warmup=1)
        out["vq_decode_s"] = decode_s
        log(f"VQ decode: {decode_s / batch:.3f} s per image")
    out["per_image_s"] = (med + decode_s) / batch
    log(f"per image (tokens + decode): {out['per_image_s']:.3f} s")
    return out
