"""Fine-tune on your own images (issue #25): the packaged config, the data check, the sample
grids, and the one-command fine-tune raising the conditioning gap on the new captions."""

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from janusflow.cli.main import main
from janusflow.configs.errors import ConfigError
from janusflow.configs.loader import load_config
from janusflow.configs.presets import tiny

COLORS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "yellow": (230, 220, 40)}


def _image_folder(tmp_path, n=48, long_caption=False):
    """Generated images: a flat colour with noise, captioned with the colour's name."""
    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        name = list(COLORS)[i % len(COLORS)]
        img = np.clip(np.array(COLORS[name]) + rng.normal(0, 8, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(d / f"{i}.png")
        cap = f"a {name} square"
        if long_caption and i % 4 == 3:
            cap = " ".join(["a very red square"] * 30)
        lines.append({"image": f"{i}.png", "caption": cap})
    caps = tmp_path / "caps.jsonl"
    caps.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return d, caps


def _build(tmp_path, **kw):
    imgs, caps = _image_folder(tmp_path, **kw)
    out = tmp_path / "data"
    assert main(["data", "build", "--images", str(imgs), "--captions", str(caps), "--out", str(out),
                 "--name", "colors", "--val-fraction", "0.25"]) == 0
    return out


def _base_checkpoint(tmp_path, scan_layers=False):
    from janusflow.checkpoint.model_io import save_model
    from janusflow.data.pipeline import shapes_tokenizer
    from janusflow.models.build import build_model
    cfg = dataclasses.replace(tiny(), scan_layers=scan_layers)
    path = tmp_path / ("base_scanned" if scan_layers else "base")
    save_model(str(path), build_model(cfg, seed=0), cfg, shapes_tokenizer(cfg.llm.vocab_size))
    return path


def test_packaged_config_and_path_form_agree(tmp_path):
    data, ckpt = _build(tmp_path), _base_checkpoint(tmp_path)
    arg = f"data={data},name=colors,init={ckpt},steps=20,lr=1e-3,task=both"
    a = load_config(f"janusflow:finetune:{arg}")
    b = load_config(f"experiments/finetune.py:{arg}")
    assert a == b
    assert a.train.stage == 3 and a.train.init_from == str(ckpt) and a.model == tiny()
    assert a.train.und_batch + a.train.gen_batch == 8 and a.train.und_batch >= 1 and a.train.text_batch == 0
    assert a.data.gen.name == "colors" and a.data.gen.caption == "caption"
    assert a.train.sample_every == 4 and len(a.train.sample_prompts) == 4
    with pytest.raises(ConfigError, match="no such packaged experiment"):
        load_config("janusflow:nope")
    with pytest.raises(ConfigError, match="bad arg"):
        load_config(f"janusflow:finetune:data={data},init={ckpt},stpes=3")


def test_data_check_one_line_per_problem(tmp_path, capsys):
    data, ckpt = _build(tmp_path, long_caption=True), _base_checkpoint(tmp_path)
    wd = tmp_path / "wd"
    # the default experiment's caption mix asks for a 'description' a user's dataset lacks
    rc = main(["train", "--config", "experiments/shapes_tiny.py", "--workdir", str(wd),
               "--set", "recipe.enabled=false", "--set", "data.gen.name=colors", "--set", f"data.gen.data_dir={data}",
               "--set", "data.und.name=", "--set", "train.und_batch=0"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "KeyError" not in err
    lines = [x for x in err.splitlines() if x.startswith("data check:")]
    assert len(lines) == 1 and "field 'description' missing" in lines[0] and "colors" in lines[0]
    # over-long captions: a warning naming the record, its file and the field; too few records: an error
    rc = main(["train", "--config", f"janusflow:finetune:data={data},name=colors,init={ckpt},steps=1,batch=64,"
               "prompt_len=16", "--workdir", str(wd)])
    cap = capsys.readouterr()
    assert rc == 2
    assert any("record" in x and ".png)" in x and "field 'caption'" in x and "data.prompt_len=16" in x
               for x in cap.out.splitlines()), (cap.out, cap.err)
    assert any("fewer than the 64 train.gen_batch" in x for x in cap.err.splitlines()), cap.err


@pytest.mark.slow
def test_finetune_one_command_raises_conditioning_gap(tmp_path):
    from janusflow.checkpoint.model_io import load_model
    from janusflow.shapes.conditioning import conditioning_gap
    from janusflow.train.state import build_vae
    data, ckpt = _build(tmp_path), _base_checkpoint(tmp_path)
    wd = tmp_path / "wd"
    spec = f"janusflow:finetune:data={data},name=colors,init={ckpt},steps=120,lr=1e-3,sample_every=60"
    assert main(["train", "--config", spec, "--workdir", str(wd)]) == 0
    cfg = load_config(spec)
    vae = build_vae(cfg, cfg.train.seed)
    gaps = {}
    for which, path in (("base", ckpt), ("tuned", wd / "model")):
        model, _ = load_model(str(path))
        g = conditioning_gap(model, vae, cfg, n=12, ts=(0.1, 0.3))
        gaps[which] = float(np.mean(g["gap"]))
    print("conditioning gap (mean over t=0.1, 0.3):", gaps)
    assert gaps["tuned"] > gaps["base"] + 0.01, gaps
    # the grids: before training and every 60 steps, same size each time
    grids = sorted((wd / "samples").glob("step_*.png"))
    assert [g.name for g in grids] == ["step_000000.png", "step_000060.png", "step_000120.png"]
    assert len({Image.open(g).size for g in grids}) == 1
    assert list((wd / "tensorboard").glob("events*"))


def test_adafactor_state_is_factored():
    """optim.name=adafactor: a matrix's optimizer state is a row and a column, not AdamW's two
    full copies (what the single-GPU full fine-tune rows of ``janusflow plan`` rely on)."""
    import dataclasses

    import jax
    import jax.numpy as jnp

    from janusflow.configs.schema import OptimConfig
    from janusflow.train.state import make_optimizer

    params = {"w": jnp.ones((512, 256)), "b": jnp.ones((256,))}
    size = lambda t: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(t))  # noqa: E731
    adam = size(make_optimizer(OptimConfig(name="adamw"))[0].init(params))
    ada_opt = make_optimizer(OptimConfig(name="adafactor", lr=1e-2, warmup_steps=0))[0]
    state = ada_opt.init(params)
    assert adam >= 2 * size(params) and size(state) < 0.05 * size(params), (adam, size(state))
    grads = jax.tree.map(jnp.ones_like, params)
    upd, _ = ada_opt.update(grads, state, params)
    # a step of about lr (not lr x the parameter scale) against the gradient
    assert float(jnp.abs(upd["w"]).mean()) == pytest.approx(1e-2, rel=0.2)
    with pytest.raises(ConfigError, match="OptimConfig.name"):
        dataclasses.replace(OptimConfig(), name="sgd")


def _fake_stream(tag):
    """Processed examples marked with their source (what MixedIterator stacks)."""
    def gen():
        i = 0
        while True:
            yield {"src": np.array(tag), "i": np.array(i)}
            i += 1
    return gen()


@pytest.mark.parametrize("rows,share", [(4, 0.25), (8, 0.2), (1, 0.2), (3, 0.5)])
def test_base_rows_are_the_share_of_every_task_stream(rows, share):
    from janusflow.data.mixing import MixedIterator, base_stream
    its = {"gen": _fake_stream(0), base_stream("gen"): _fake_stream(1),
           "und": _fake_stream(0), base_stream("und"): _fake_stream(1)}
    mixed = MixedIterator(its, {"und": rows, "gen": rows, "text": 0}, base_share=share)
    steps = 40
    per_step = [[int(b[t]["src"].sum()) for t in ("und", "gen")] for b in (next(mixed) for _ in range(steps))]
    for t in (0, 1):
        base = [s[t] for s in per_step]
        assert sum(base) == int(steps * rows * share + 1e-9)           # the share, exactly
        # spread over the run: every batch holds floor or ceil of its share
        assert min(base) == int(rows * share + 1e-9) and max(base) == -int(-rows * share // 1)
    assert mixed.metrics()["data/gen_base/examples"] == int(steps * rows * share + 1e-9)


def test_no_base_named_no_base_rows():
    from janusflow.data.mixing import MixedIterator
    mixed = MixedIterator({"gen": _fake_stream(0)}, {"und": 0, "gen": 4, "text": 0})
    assert all(int(next(mixed)["gen"]["src"].sum()) == 0 for _ in range(10))
    assert not any("base" in k for k in mixed.metrics())


def _white_folder(tmp_path, n=16):
    """Base data: white images, captioned 'a white circle'."""
    d = tmp_path / "base_imgs"
    d.mkdir()
    for i in range(n):
        Image.fromarray(np.full((32, 32, 3), 255, np.uint8)).save(d / f"{i}.png")
    caps = tmp_path / "base_caps.jsonl"
    caps.write_text("".join(json.dumps({"image": f"{i}.png", "caption": "a white circle"}) + "\n" for i in range(n)))
    out = tmp_path / "base_data"
    assert main(["data", "build", "--images", str(d), "--captions", str(caps), "--out", str(out),
                 "--name", "white"]) == 0
    return out


def test_finetune_mixes_base_data_only_when_named(tmp_path):
    from janusflow.data.check import check_data
    from janusflow.data.pipeline import make_pipeline
    data, ckpt, base = _build(tmp_path), _base_checkpoint(tmp_path), _white_folder(tmp_path)
    spec = f"janusflow:finetune:data={data},name=colors,init={ckpt}"
    plain = load_config(spec)
    assert not plain.data.base.enabled and plain.data.base_share == 0
    mixed_cfg = load_config(f"{spec},base=white,base_data={base},base_share=0.25")
    assert mixed_cfg.data.base.name == "white" and mixed_cfg.data.base_share == 0.25
    assert load_config(f"{spec},base=white,base_data={base}").data.base_share == 0.2     # the default share
    with pytest.raises(ConfigError, match="names no base data"):
        load_config(f"{spec},base_share=0.3")
    with pytest.raises(ConfigError, match="must be < 1"):
        load_config(f"{spec},base=white,base_data={base},base_share=1")

    def white_rows(cfg, steps=8):
        with make_pipeline(cfg, cfg.data, process_index=0, process_count=1) as it:
            out = []
            for _ in range(steps):
                images = next(it)["gen"]["images"]                # (8, H, W, 3) in [-1, 1]
                out.append(int((images.reshape(len(images), -1).min(-1) > 0.9).sum()))
            return out
    assert white_rows(plain) == [0] * 8                           # only the user's images
    rows = white_rows(mixed_cfg)
    assert rows == [2] * 8, rows                                  # 0.25 of 8 rows: 2 white, 6 coloured
    assert check_data(mixed_cfg).ok
    # the base data is checked like the user's: a field it lacks is one line naming data.base
    bad = dataclasses.replace(mixed_cfg, data=dataclasses.replace(
        mixed_cfg.data, base=dataclasses.replace(mixed_cfg.data.base, caption="prompt")))
    errors = check_data(bad).errors
    assert len(errors) == 1 and "field 'prompt' missing (data.base reads it" in errors[0], errors


def test_memory_switches_reach_the_planned_configs(tmp_path):
    """The one-GPU rows of the README's fine-tune memory table are args of the one command:
    bf16 weights + 8-bit AdamW or Adafactor, LoRA, and the EMA off (the plans' setting)."""
    data, ckpt = _build(tmp_path), _base_checkpoint(tmp_path)
    spec = f"janusflow:finetune:data={data},name=colors,init={ckpt}"
    plain = load_config(spec)
    assert plain.train.lora.rank == 0 and plain.train.optim.ema_decay == 0.99 and plain.train.optim.name == "adamw"
    full = load_config(f"{spec},params=bf16,optim=adamw8bit,ema=0")
    assert (full.model.param_dtype, full.train.optim.name, full.train.optim.ema_decay) == ("bfloat16", "adamw8bit", 0)
    assert load_config(f"{spec},params=bf16,optim=adafactor,ema=0").train.optim.name == "adafactor"
    lora = load_config(f"{spec},params=bf16,lora=16,ema=0")
    assert lora.train.lora.rank == 16 and lora.model.param_dtype == "bfloat16"
    # LoRA runs unrolled (the merged stacks of a scan did not fit 24 GB), whatever the checkpoint's layout
    scanned = f"janusflow:finetune:data={data},name=colors,init={_base_checkpoint(tmp_path, scan_layers=True)}"
    assert load_config(scanned).model.scan_layers is True
    assert load_config(f"{scanned},lora=16").model.scan_layers is False and lora.model.scan_layers is False
    for bad, msg in (("ema=1", "must be < 1"), ("lora=-1", "must be >= 0"), ("lora=x", "not an int")):
        with pytest.raises(ConfigError, match=msg):
            load_config(f"{spec},{bad}")
