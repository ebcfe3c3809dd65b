"""Janus-Pro training: the AR image-token loss, its place in the sharded train step, CFG
dropout with the official unconditional rows, and the tiny VQ tokenizer's training."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from janusflow.configs import presets
from janusflow.configs.schema import ExperimentConfig, LossConfig, MeshConfig, OptimConfig, TrainConfig
from janusflow.models.build import build_model
from janusflow.objectives.image_tokens import image_token_loss
from janusflow.parallel.mesh import make_mesh
from janusflow.train.state import make_init, state_shardings
from janusflow.train.step import check_finite, jit_train_step, loss_sums
from janusflow.train.synthetic import synthetic_batch

needs_8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")


def _cfg(model=None, **train):
    base = dict(stage=2, und_batch=4, gen_batch=4, text_batch=4, steps=10,
                optim=OptimConfig(lr=1e-3, warmup_steps=2))
    base.update(train)
    return ExperimentConfig(name="t", model=model or presets.tiny_janus_pro(), seq_len=256,
                            train=TrainConfig(**base))


@functools.lru_cache(maxsize=None)
def _model():
    return nnx.jit(lambda: build_model(presets.tiny_janus_pro(), seed=3))()   # eager init is slow


def _direct_loss(model, ids, mask, codes):
    """The image-token cross entropy written out position by position: for each image token,
    one uncached forward of the prompt and the codes before it, the log-softmax of the image
    head at the last position."""
    @nnx.jit   # one small program per length; op-by-op dispatch of the LLM costs far more
    def last_logp(model, prompt, previous):
        lm = model.language_model
        e = jnp.concatenate([lm.embed(prompt), model.gen_image_embeds(previous)], axis=1)
        return jax.nn.log_softmax(model.image_logits(lm(e).hidden[:, -1])[0])

    total = 0.0
    for b in range(ids.shape[0]):
        keep = np.asarray(mask[b])
        prompt = ids[b:b + 1, keep]
        for i in range(codes.shape[1]):
            logp = last_logp(model, prompt, codes[b:b + 1, :i])
            total -= float(logp[int(codes[b, i])])
    return total


def test_image_token_loss_equals_a_direct_computation():
    model, mc = _model(), presets.tiny_janus_pro()
    r = np.random.RandomState(0)
    n = 3     # a prefix of the image is enough to check the alignment of every position
    codes = jnp.asarray(r.randint(0, mc.vq.codebook_size, (2, n)), jnp.int32)
    ids = jnp.asarray(r.randint(10, 500, (2, 7)), jnp.int32)
    mask = jnp.asarray([[False, False, True, True, True, True, True], [True] * 7])   # left padding
    s, count = image_token_loss(model, ids, mask, codes)
    assert float(count) == 2 * n
    np.testing.assert_allclose(float(s), _direct_loss(model, ids, mask, codes), rtol=2e-5)


def test_step_loss_is_the_image_token_mean_and_cfg_dropout_reads_the_official_rows():
    model, mc = _model(), presets.tiny_janus_pro()
    cfg = _cfg(und_batch=0, text_batch=0, gen_batch=3)
    batch = synthetic_batch(cfg)
    g = batch["gen"]
    codes, _ = model.gen_vision.encode(g["images"])
    dropped = jnp.asarray([False, True, False])
    sums = loss_sums(model, None, batch, {"dropped": dropped}, cfg)
    ids = jnp.where(dropped[:, None], g["uncond_prompt_ids"], g["prompt_ids"])
    want, _ = image_token_loss(model, ids, g["prompt_mask"], codes)
    np.testing.assert_allclose(float(sums["img"]), float(want), rtol=1e-6)
    assert float(sums["rf"]) == 0 and float(sums["repa"]) == 0
    # the dropped row really is different: its prompt is BOS, pads, <begin_of_image>
    none, _ = image_token_loss(model, g["prompt_ids"], g["prompt_mask"], codes)
    assert abs(float(none) - float(want)) > 1e-4


def test_pipeline_prompts_end_in_the_image_tag_with_the_official_uncond_row():
    from janusflow.configs.data import DataConfig, SHAPES_32, SourceConfig
    from janusflow.configs.variants import AUTOREGRESSIVE
    from janusflow.data.pipeline import GenProcessor, shapes_tokenizer
    from janusflow.sample.ar_generate import uncond_prompt_ids
    tok = shapes_tokenizer(512, AUTOREGRESSIVE.roles)
    p = GenProcessor(tok, SourceConfig(name=SHAPES_32, caption="caption"), 24, 32, None, AUTOREGRESSIVE)
    out = p.process({"caption": "a red circle", "image": _png()}, np.random.default_rng(0), [])
    ids, mask, unc = out["prompt_ids"], out["prompt_mask"], out["uncond_prompt_ids"]
    assert ids[-1] == tok.image_start_id and mask[-1] and not mask[0]
    real = ids[mask]
    assert list(unc[mask]) == [real[0]] + [tok.pad_id] * (len(real) - 2) + [real[-1]]
    np.testing.assert_array_equal(unc, np.asarray(uncond_prompt_ids(jnp.asarray(ids[None]), jnp.asarray(mask[None]),
                                                                    tok.pad_id))[0])


def _png():
    import io
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


@functools.lru_cache(maxsize=None)
def _compiled(cfg, mesh_cfg, n_devices):
    mesh = make_mesh(mesh_cfg, devices=jax.devices()[:n_devices])
    parts, _, sh = state_shardings(cfg, mesh)
    return mesh, make_init(cfg, parts, sh), jit_train_step(cfg, parts, sh, mesh, synthetic_batch(cfg))


def _run(cfg, mesh_cfg, n, steps=1):
    mesh, init, step = _compiled(cfg, mesh_cfg, n)
    batch = synthetic_batch(cfg)
    with jax.set_mesh(mesh):
        state = init()
    first_vq = jax.device_get(state.frozen["gen_vision"])
    out = []
    for i in range(steps):
        state, m = step(state, batch)
        check_finite(i, m)
        out.append(jax.device_get(m))
    return state, out, first_vq


@needs_8
def test_train_step_sharded_on_8_devices_equals_1_and_keeps_the_vq_frozen():
    # one LLM layer: two compiled steps (1 and 8 devices) of every task's rows stay fast
    mc = presets.tiny_janus_pro()
    cfg = _cfg(model=presets.tiny_janus_pro(llm=dataclasses.replace(mc.llm, num_layers=1), repa_layer=1))
    one, m1, vq1 = _run(cfg, MeshConfig(data=1), 1)
    eight, m8, _ = _run(cfg, MeshConfig(data=2, fsdp=2, tensor=2), 8)
    assert m1[0]["loss_img"] > 0 and m1[0]["loss_ar"] > 0 and m1[0]["loss_rf"] == 0
    for k in ("loss", "loss_ar", "loss_img"):
        np.testing.assert_allclose(m8[0][k], m1[0][k], rtol=1e-5)
    errs = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))), eight.params, one.params)
    assert max(jax.tree.leaves(errs)) < 1e-5
    head = eight.params["gen_head"]["vision_head"]["kernel"]
    assert len({s.device for s in head.addressable_shards}) == 8
    assert "gen_vision" not in one.params            # the tokenizer is frozen in every stage
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(one.frozen["gen_vision"]), vq1)


def test_precomputed_codes_give_the_same_loss_as_encoding_in_the_step():
    model, mc = _model(), presets.tiny_janus_pro()
    cfg = _cfg(und_batch=0, text_batch=0, gen_batch=2)
    batch = synthetic_batch(cfg)
    codes, _ = model.gen_vision.encode(batch["gen"]["images"])
    pre = {"gen": {**{k: v for k, v in batch["gen"].items() if k != "images"}, "codes": codes}}
    noise = {"dropped": jnp.zeros((2,), bool)}
    a = loss_sums(model, None, batch, noise, cfg)["img"]
    b = loss_sums(model, None, pre, noise, cfg)["img"]
    assert float(a) == float(b)


def test_image_token_training_lowers_the_loss_on_a_fixed_batch():
    cfg = _cfg(und_batch=0, text_batch=0, gen_batch=4, loss=LossConfig(cfg_drop_prob=0.0),
               optim=OptimConfig(lr=3e-3, warmup_steps=1, ema_decay=0.0))
    _, m, _ = _run(cfg, MeshConfig(data=1), 1, steps=25)
    assert m[-1]["loss_img"] < 0.7 * m[0]["loss_img"], (m[0]["loss_img"], m[-1]["loss_img"])


def _shapes_images(n, seed):
    from janusflow.shapes import world
    rng = np.random.default_rng(seed)
    tags = ("single_object", "two_object", "colors", "counting")
    imgs = [world.render(world.sample_scene(rng, 32, tags[i % 4])[0], 32, rng) for i in range(n)]
    return np.stack(imgs).astype(np.float32) / 127.5 - 1.0


def test_vq_training_lowers_the_reconstruction_loss():
    from janusflow.objectives.vq import vq_losses
    from janusflow.train.vq_pretrain import pretrain_vq
    from janusflow.models.vq_tokenizer import VQTokenizer
    cfg = presets.tiny_janus_pro().vq
    batches = iter([{"gen": {"images": _shapes_images(8, s)}} for s in range(40)])
    res = pretrain_vq(cfg, batches, 40, lr=2e-3, seed=0, log=lambda m: None)
    held = jnp.asarray(_shapes_images(16, 1000))          # images no step saw
    before = vq_losses(VQTokenizer(cfg, rngs=nnx.Rngs(0)), held)
    tok = VQTokenizer(cfg, rngs=nnx.Rngs(1))
    state = nnx.state(tok, nnx.Param)
    nnx.replace_by_pure_dict(state, res["params"])
    nnx.update(tok, state)
    after = vq_losses(tok, held)
    assert float(after["rec"]) < 0.5 * float(before["rec"]), (float(before["rec"]), float(after["rec"]))
    assert res["last"]["rec"] < res["first"]["rec"] and 1 <= res["codes_used"] <= cfg.codebook_size
    # the codebook and commitment terms are the distances between z and its entry, as written
    z = tok.encode_latents(held)
    codes, zf, zq = tok.quantize.nearest(z)
    np.testing.assert_allclose(float(after["codebook"]), float(jnp.mean((zq - zf) ** 2)), rtol=1e-5)
    np.testing.assert_allclose(float(after["commit"]), float(after["codebook"]), rtol=1e-6)


@pytest.mark.slow   # the whole recipe (vq, siglip, llm, stages 1-3, eval) in a subprocess: minutes
def test_tiny_janus_pro_config_trains_end_to_end(tmp_path):
    import json
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    work = tmp_path / "run"
    p = subprocess.run([sys.executable, "-c", "import sys; from janusflow.cli.main import main; sys.exit(main())",
                        "train", "--config", "experiments/shapes_tiny_janus_pro.py:quick", "--workdir", str(work),
                        "--set", "recipe.eval_untrained=false"],
                       cwd=root, env=env, capture_output=True, text=True, timeout=1800)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    vq = json.loads((work / "vq_pretrain.json").read_text())
    assert vq["codebook_size"] == 256 and vq["last"]["rec"] > 0
    res = json.loads((work / "results.json").read_text())["final"]
    assert set(res["shapes_bench"]["per_tag"]) == {"single_object", "two_object", "counting", "colors",
                                                  "position", "color_attr"}
    assert "conditioning" not in res and 0 <= res["understanding"]["overall"] <= 1
    rows = [json.loads(line) for line in open(work / "stage2" / "metrics.jsonl")]
    assert rows and all(r["loss_img"] > 0 and r["loss_rf"] == 0 for r in rows)


def test_bench_sample_times_the_ar_sampler():
    from janusflow.perf import bench_ar
    lines = []
    out = bench_ar.run(presets.tiny_janus_pro(), batch=1, repeats=2, prompt_len=8, log=lines.append)
    assert out["num_tokens"] == 64 and len(out["samples_s"]) == 2 and out["sample_s"] > 0
    assert out["per_image_s"] >= out["sample_s"] and out["vq_decode_s"] > 0
    assert any("ms per image token" in x for x in lines)
    # it times the loop the sampler runs: on this CPU, on the decoding kernels
    from janusflow.sample.layout import decoding_config
    d = decoding_config(presets.tiny_janus_pro())
    assert f"products {d.matmul_impl}, attention {d.attention_impl}" in "\n".join(lines)
