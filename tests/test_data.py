"""Data pipeline: shapes dataset, sharding, determinism, resume, mixing, layout, bad input."""

import dataclasses
import io
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from janusflow.configs.errors import ConfigError
from janusflow.configs.schema import ExperimentConfig, TrainConfig
from janusflow.shapes import world as shapes
from janusflow.data import preprocess as pp
from janusflow.data.mixing import task_batch_sizes, with_task_ratios
from janusflow.configs.data import DataConfig
from janusflow.data.pipeline import make_pipeline, shapes_tokenizer
from janusflow.shapes.dataset import build_shapes, make_example, shapes_config
from janusflow.configs.data import SourceConfig
from janusflow.data.sources import open_source, shard_bounds, task_dataset
from janusflow.configs.presets import tiny
from janusflow.train.synthetic import synthetic_batch

N_TRAIN, N_VAL = 240, 60


@pytest.fixture(autouse=True)
def _no_default_data_dir(tmp_path, monkeypatch):
    """A default-named source must never generate the full dataset under ~/tensorflow_datasets."""
    monkeypatch.setenv("JANUSFLOW_DATA_DIR", str(tmp_path / "default_data_dir"))


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    tfds.disable_progress_bar()
    return build_shapes(str(tmp_path_factory.mktemp("tfds")), shapes_config(32, N_TRAIN, N_VAL))


@pytest.fixture(scope="module")
def tok():
    return shapes_tokenizer(512)


def _cfg(und=4, gen=4, text=2, **model):
    return ExperimentConfig(model=tiny(**model), seq_len=256,
                            train=TrainConfig(und_batch=und, gen_batch=gen, text_batch=text))


def _data(d, **kw):
    src = SourceConfig(name=d)
    return DataConfig(und=src, gen=src, text=dataclasses.replace(src, text="description"), **kw)


def _equal(a, b):
    return (a.keys() == b.keys() and all(a[t].keys() == b[t].keys() for t in a)
            and all(np.array_equal(a[t][k], b[t][k]) for t in a for k in a[t]))


def _records(d, split):
    src = open_source(SourceConfig(name=d, split=split), "image")
    return [src[i] for i in range(len(src))]


# ---------------------------------------------------------------------- shapes dataset
def test_shapes_dataset_contents_and_heldout_prompts(shapes_dir):
    train, val = _records(shapes_dir, "train"), _records(shapes_dir, "validation")
    assert len(train) == N_TRAIN and len(val) == N_VAL
    assert sorted(int(r["id"]) for r in train) == list(range(N_TRAIN))
    tags = [r["tag"].decode() for r in train]
    assert {t: tags.count(t) for t in shapes.TAGS} == {t: N_TRAIN // 6 for t in shapes.TAGS}
    for r in train + val:
        meta = json.loads(r["metadata"])
        assert meta["prompt"] == r["caption"].decode() and meta["tag"] == r["tag"].decode()
        assert len(r["qa"]["question"]) == len(r["qa"]["answer"]) >= 1
        assert 1 <= len(r["objects"]["shape"]) <= 4
    train_caps = {r["caption"] for r in train}
    held = [r for r in val if r["tag"].decode() in shapes.HELDOUT_TAGS]
    assert held and not any(r["caption"] in train_caps for r in held)
    assert all(shapes.is_heldout(json.loads(r["metadata"])) for r in held)
    # Example i is a pure function of (seed, split, i): the stored bytes regenerate exactly.
    r = train[0]
    assert make_example(shapes_config(32, N_TRAIN, N_VAL), "train", int(r["id"]))["image"] == r["image"]


def test_shapes_ground_truth_matches_pixels(shapes_dir):
    """Decode every stored image, detect analytically, get back exactly the stored objects."""
    from janusflow.shapes.detector import ShapesDetector
    det = ShapesDetector()
    for split in ("train", "validation"):
        for r in _records(shapes_dir, split):
            img = pp.decode_image(r["image"])
            got = sorted((s, c, b) for s, c, b, _ in det.detect_objects(img))
            o = r["objects"]
            want = sorted((s.decode(), c.decode(), tuple(int(v) for v in b))
                          for s, c, b in zip(o["shape"], o["color"], o["pixel_box"]))
            assert got == want, (split, int(r["id"]))


# ---------------------------------------------------------------------- preprocessing
def test_preprocess_resize_crop_pad_and_normalisation():
    from janusflow.models.siglip import normalize
    import jax.numpy as jnp
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    full = np.asarray(Image.fromarray(img).resize((45, 32), Image.Resampling.BICUBIC))
    for seed in range(3):
        crop = pp.resize_short_side_random_crop(img, 32, np.random.default_rng(seed))
        x = int(np.random.default_rng(seed).integers(0, 45 - 32 + 1))
        assert crop.shape == (32, 32, 3) and np.array_equal(crop, full[:, x:x + 32])
    tall = rng.integers(0, 256, (40, 20, 3), dtype=np.uint8)
    out = pp.resize_long_side_pad(tall, 32, pp.mean_color((0.5, 0.5, 0.5)))
    assert out.shape == (32, 32, 3) and pp.mean_color((0.5,) * 3) == (127, 127, 127)
    assert (out[:, :8] == 127).all() and (out[:, 24:] == 127).all()       # 16 px wide, centred
    assert np.array_equal(out[:, 8:24], np.asarray(Image.fromarray(tall).resize((16, 32), Image.Resampling.BICUBIC)))
    for mean, std in [((0.5,) * 3, (0.5,) * 3), ((0.48, 0.45, 0.40), (0.26, 0.26, 0.27))]:
        cfg = dataclasses.replace(tiny().siglip, pixel_mean=mean, pixel_std=std)
        ref = np.asarray(normalize(jnp.asarray(img[None] / 255.0, jnp.float32), cfg))[0]
        np.testing.assert_allclose(pp.to_siglip(img, mean, std), ref, atol=1e-5)
    v = pp.to_vae(np.array([[[0, 255, 51]]], np.uint8))
    np.testing.assert_allclose(v, [[[-1.0, 1.0, -0.6]]], atol=1e-6)


def test_decode_image_fixes_and_rejects():
    def png(a, mode=None):
        buf = io.BytesIO()
        Image.fromarray(a, mode).save(buf, format="PNG")
        return buf.getvalue()
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)                      # opaque pixel; the rest transparent
    flags = []
    out = pp.decode_image(png(rgba), flags)
    assert out.shape == (4, 4, 3) and flags == ["fixed_alpha"]
    assert tuple(out[0, 0]) == (10, 20, 30) and (out[1:] == 255).all()
    flags = []
    gray = pp.decode_image(png(np.full((3, 5), 77, np.uint8)), flags)
    assert gray.shape == (3, 5, 3) and (gray == 77).all() and flags == ["fixed_gray"]
    i16 = Image.fromarray(np.full((3, 3), 65535, np.uint16))
    assert (pp.decode_image(i16) == 255).all()
    assert pp.decode_image(np.zeros((2, 2, 1), np.uint8)).shape == (2, 2, 3)
    for bad in (b"not an image", b"", png(rgba)[:40]):
        with pytest.raises(pp.BadExample) as e:
            pp.decode_image(bad)
        assert e.value.reason == "bad_image"


# ---------------------------------------------------------------------- pipeline
def test_batch_layout_is_exactly_the_train_step_layout(shapes_dir, tok):
    cfg = _cfg()
    b = next(make_pipeline(cfg, _data(shapes_dir, und_vae_images="yes"), tok, process_index=0, process_count=1))
    s = synthetic_batch(cfg)
    assert b.keys() == s.keys()
    for task in s:
        assert b[task].keys() == s[task].keys(), task
        for k in s[task]:
            assert b[task][k].dtype == s[task][k].dtype, (task, k)
            assert b[task][k].shape[0] == s[task][k].shape[0], (task, k)
            if b[task][k].ndim == 4:
                assert b[task][k].shape == s[task][k].shape, (task, k)
    n = cfg.model.num_und_tokens
    u, g, t = b["und"], b["gen"], b["text"]
    assert u["ids"].shape == (4, 2 + n + 64)
    assert (u["image_mask"].sum(1) == 1 + n).all()
    assert (u["ids"][u["image_mask"]].reshape(4, 1 + n)[:, 0] == tok.image_start_id).all()
    assert not (u["loss_mask"] & ~u["attention_mask"]).any() and (u["loss_mask"].sum(1) >= 2).all()
    # Generation prompts: left-padded, BOS first real token, never the image tag.
    assert g["prompt_mask"][:, -1].all() and not (g["prompt_ids"] == tok.image_start_id).any()
    first = g["prompt_mask"].argmax(1)
    assert (g["prompt_ids"][np.arange(4), first] == tok.bos_id).all()
    assert g["images"].min() >= -1 and g["images"].max() <= 1
    assert np.abs(g["repa_pixels"] - (g["images"] + 1) / 2 * 2 + 1).max() < 1e-5   # same crop, 0.5/0.5
    assert (t["loss_mask"] == t["attention_mask"]).all()
    # The default (auto) leaves out what the tiny SigLIP model does not read.
    auto = next(make_pipeline(cfg, _data(shapes_dir), tok, process_index=0, process_count=1))
    assert "vae_images" not in auto["und"] and "pixels" in auto["und"]


def test_same_seed_same_batches_and_resume_from_saved_state(shapes_dir, tok):
    cfg, data = _cfg(), _data(shapes_dir, seed=3)
    a = make_pipeline(cfg, data, tok, process_index=0, process_count=1)
    first = [next(a) for _ in range(3)]
    state = json.loads(json.dumps(a.get_state()))          # must survive a JSON checkpoint
    after = [next(a) for _ in range(2)]
    b = make_pipeline(cfg, data, tok, process_index=0, process_count=1)
    assert all(_equal(x, next(b)) for x in first)
    c = make_pipeline(cfg, data, tok, process_index=0, process_count=1)
    c.set_state(state)
    assert all(_equal(x, next(c)) for x in after)
    assert c.stats == a.stats and c.steps == a.steps == 5
    other = make_pipeline(cfg, dataclasses.replace(data, seed=4), tok, process_index=0, process_count=1)
    assert not _equal(first[0], next(other))


def test_process_shards_are_disjoint_and_cover_the_split(shapes_dir):
    assert [shard_bounds(10, i, 3) for i in range(3)] == [(0, 3), (3, 6), (6, 10)]
    with pytest.raises(ValueError):
        shard_bounds(2, 0, 3)
    src = open_source(SourceConfig(name=shapes_dir), "image")
    seen = []
    for i in range(3):
        ds = task_dataset(src, seed=1, shard_index=i, shard_count=3, repeat=False)
        ids = [int(r["id"]) for r in ds]
        assert len(ids) == len(set(ids)) and len(ids) in (N_TRAIN // 3, N_TRAIN // 3 + 1)
        seen.append(set(ids))
    assert sum(len(s) for s in seen) == N_TRAIN and set.union(*seen) == set(range(N_TRAIN))
    # Two processes: each yields its half of the global per-task batch, different examples.
    cfg = _cfg(und=4, gen=4, text=2)
    p0 = next(make_pipeline(cfg, _data(shapes_dir), process_index=0, process_count=2))
    p1 = next(make_pipeline(cfg, _data(shapes_dir), process_index=1, process_count=2))
    assert p0["gen"]["images"].shape[0] == 2 and p0["text"]["ids"].shape[0] == 1
    assert not np.array_equal(p0["gen"]["images"], p1["gen"]["images"])
    with pytest.raises(ValueError, match="divisible"):
        make_pipeline(_cfg(und=3), _data(shapes_dir), process_index=0, process_count=2)


def test_ratio_rounding_and_mixing_over_1000_examples(shapes_dir, tok):
    assert task_batch_sizes((14, 80, 6), 512) == {"und": 72, "gen": 409, "text": 31}
    assert task_batch_sizes((50, 50, 0), 16, multiple_of=8) == {"und": 8, "gen": 8, "text": 0}
    assert task_batch_sizes((1, 98, 1), 24, multiple_of=4) == {"und": 4, "gen": 16, "text": 4}
    for bad in ((1, 2), (-1, 1, 1), (0, 0, 0)):
        with pytest.raises(ValueError):
            task_batch_sizes(bad, 16)
    with pytest.raises(ValueError):
        task_batch_sizes((1, 1, 1), 12, multiple_of=8)
    ratios, gb = (21, 70, 9), 16
    cfg = with_task_ratios(_cfg(), ratios, gb)
    it = make_pipeline(cfg, _data(shapes_dir, num_threads=0), tok, process_index=0, process_count=1)
    counts = dict.fromkeys(("und", "gen", "text"), 0)
    while sum(counts.values()) < 1000:
        for task, b in next(it).items():
            counts[task] += len(b["ids"] if "ids" in b else b["images"])
    total = sum(counts.values())
    for k, r in zip(counts, ratios):
        assert abs(counts[k] / total - r / sum(ratios)) <= 1 / gb, (counts, ratios)
        assert it.stats[f"{k}/examples"] == counts[k]


def _messy_dataset(root):
    """A dataset holding what real data throws at a run: corrupt, RGBA, one-channel images,
    an empty caption, a caption far longer than the context."""
    from janusflow.data.build import _LocalBuilder

    def png(a):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        return buf.getvalue()
    rng = np.random.default_rng(0)
    good = png(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8))
    rows = [(b"\x89PNG garbage", "a corrupt image", "q", "a"),
            (png(rng.integers(0, 256, (30, 30, 4), dtype=np.uint8)), "an image with alpha", "q", "a"),
            (png(rng.integers(0, 256, (30, 20), dtype=np.uint8)), "a gray image", "q", "a"),
            (good, "", "What?", ""),
            (good, "red circle " * 200, "How many? " * 300, "many")]

    def gen():
        for i, (img, cap, q, a) in enumerate(rows):
            yield i, {"image": img, "caption": [cap], "file_name": f"{i}",
                      "qa": {"question": [q], "answer": [a]}}
    features = tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3)),
        "caption": tfds.features.Sequence(tfds.features.Text()), "file_name": tfds.features.Text(),
        "qa": tfds.features.Sequence({"question": tfds.features.Text(), "answer": tfds.features.Text()})})
    b = _LocalBuilder(name="messy", features=features, splits={"train": gen}, description="", data_dir=root)
    b.download_and_prepare()
    return str(b.data_dir)


def test_bad_input_is_skipped_or_fixed_and_counted(tmp_path, tok):
    d = _messy_dataset(str(tmp_path))
    src = SourceConfig(name=d)
    cfg = _cfg(und=2, gen=2, text=0)
    it = make_pipeline(cfg, DataConfig(und=src, gen=src, prompt_len=24, num_threads=0), tok,
                       process_index=0, process_count=1)
    for _ in range(10):
        b = next(it)
        assert np.isfinite(b["gen"]["images"]).all() and b["gen"]["prompt_mask"].sum(1).max() <= 24
    st = it.stats
    for key in ("gen/skipped_bad_image", "und/skipped_bad_image", "gen/skipped_empty_caption",
                "und/skipped_empty_text", "gen/fixed_alpha", "gen/fixed_gray", "und/fixed_alpha",
                "gen/truncated", "und/skipped_too_long"):
        assert st[key] > 0, (key, dict(st))
    assert it.metrics()["data/gen/examples"] == 20
    # A source whose every record is unusable fails loudly instead of spinning forever.
    it.max_consecutive_skips = 5
    it._its["gen"] = iter([{"_skip": "bad_image"}] * 10)
    with pytest.raises(RuntimeError, match="in a row"):
        next(it)


def test_wrong_key_mapping_and_missing_dataset_are_clear_errors(shapes_dir, tmp_path, tok):
    bad = dataclasses.replace(SourceConfig(name=shapes_dir), caption="prompt")
    # checked before the first batch: one line naming the field and the fields the record has
    with pytest.raises(ConfigError, match=r"field 'prompt' missing \(data.gen reads it.*'caption'"):
        make_pipeline(_cfg(text=0), DataConfig(und=SourceConfig(shapes_dir), gen=bad), tok,
                      process_index=0, process_count=1)
    with pytest.raises(FileNotFoundError, match="not prepared"):
        make_pipeline(_cfg(text=0), DataConfig(und=SourceConfig(shapes_dir),
                                               gen=SourceConfig("nope_data", data_dir=str(tmp_path))),
                      tok, process_index=0, process_count=1)
    with pytest.raises(ValueError, match="names no dataset"):
        make_pipeline(_cfg(text=2), DataConfig(und=SourceConfig(shapes_dir), gen=SourceConfig(shapes_dir),
                                               text=SourceConfig()), tok, process_index=0, process_count=1)
    with pytest.raises(ValueError, match="cannot hold"):
        make_pipeline(dataclasses.replace(_cfg(), seq_len=60), _data(shapes_dir), tok,
                      process_index=0, process_count=1)


def test_default_experiment_mixes_geneval_prompts_and_descriptions(shapes_dir, tok):
    """shapes_tiny.py trains generation on "caption|description": about half the prompts are the
    GenEval phrasing, the others the scene description naming every object's colour, and
    prompt_len holds the descriptions whole (none truncated)."""
    import os

    from janusflow.configs.loader import load_config
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = load_config(os.path.join(root, "experiments", "shapes_tiny.py"))
    assert cfg.data.gen.caption == "caption|description"
    data = dataclasses.replace(cfg.data, gen=dataclasses.replace(cfg.data.gen, name=shapes_dir))
    view = with_task_ratios(cfg, (0, 1, 0), 96)
    it = make_pipeline(view, data, tok, process_index=0, process_count=1)
    g = next(it)["gen"]
    texts = [tok.decode([int(i) for i, m in zip(ids, mask) if m]) for ids, mask in zip(g["prompt_ids"], g["prompt_mask"])]
    assert all(t.startswith("User: ") and t.endswith("\n\nAssistant:") for t in texts)   # template whole
    bodies = [t[len("User: "):-len("\n\nAssistant:")] for t in texts]
    geneval = sum(b.startswith("a photo of ") for b in bodies)
    described = sum(b.split(" ")[0].lower() in shapes.NUMBERS and b.split(" ")[1].startswith("object") for b in bodies)
    assert geneval + described == 96 and 25 <= geneval <= 71, (geneval, described)
    assert not any("truncated" in k for k in it.metrics()), it.metrics()
