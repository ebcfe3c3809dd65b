"""`janusflow data build`: users' images + captions -> a TFDS dataset the pipeline can name."""

import json

import numpy as np
import pytest
from PIL import Image

from janusflow.cli.main import main
from janusflow.configs.schema import ExperimentConfig, TrainConfig
from janusflow.configs.data import DataConfig
from janusflow.data.pipeline import make_pipeline, shapes_tokenizer
from janusflow.configs.data import SourceConfig
from janusflow.data.sources import open_source
from janusflow.configs.presets import tiny


def _folder(tmp_path):
    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(d / "a.jpg")
    Image.fromarray(rng.integers(0, 256, (50, 30, 4), dtype=np.uint8)).save(d / "sub" / "b.png")
    Image.fromarray(rng.integers(0, 256, (50, 30), dtype=np.uint8)).save(d / "c.png")
    (d / "bad.jpg").write_bytes(b"not an image")
    lines = [{"image": "a.jpg", "caption": "a noisy picture"},
             {"image": "sub/b.png", "caption": ["alpha one", "alpha two"],
              "qa": [{"question": "What is it?", "answer": "noise"}]},
             {"file_name": "c.png", "conversations": [{"from": "human", "value": "<image>\nDescribe."},
                                                     {"from": "gpt", "value": "gray noise"},
                                                     # the official Janus-Pro speakers
                                                     {"role": "<|User|>", "content": "Colour?"},
                                                     {"role": "<|Assistant|>", "content": "gray"}]},
             {"image": "bad.jpg", "caption": "unreadable"},
             {"image": "missing.jpg", "caption": "no file"},
             {"image": "a.jpg", "caption": ""}]
    caps = tmp_path / "caps.jsonl"
    caps.write_text("".join(json.dumps(x) + "\n" for x in lines) + "{broken json\n")
    return d, caps


def test_data_build_cli_and_pipeline_reads_it_by_name(tmp_path, capsys):
    imgs, caps = _folder(tmp_path)
    out = tmp_path / "tfds"
    assert main(["data", "build", "--images", str(imgs), "--captions", str(caps), "--out", str(out),
                 "--name", "my_pets"]) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("wrote ")][-1]
    stats = json.loads(line.split(": ", 1)[1])
    assert stats == {"written_train": 3, "skipped_bad_image": 1, "skipped_missing_file": 1,
                     "skipped_no_text": 1, "skipped_bad_line": 1, "fixed_alpha": 1, "fixed_gray": 1}
    src = SourceConfig(name="my_pets", data_dir=str(out))
    recs = {r["file_name"].decode(): r for r in (lambda s: [s[i] for i in range(len(s))])(open_source(src))}
    assert sorted(recs) == ["a.jpg", "c.png", "sub/b.png"]
    assert recs["sub/b.png"]["image"].shape == (50, 30, 3)
    assert [c.decode() for c in recs["sub/b.png"]["caption"]] == ["alpha one", "alpha two"]
    assert [q.decode() for q in recs["c.png"]["qa"]["question"]] == ["Describe.", "Colour?"]
    assert [a.decode() for a in recs["c.png"]["qa"]["answer"]] == ["gray noise", "gray"]
    # The configs name it (name + data_dir); und skips the caption-only row, gen the QA-only one.
    cfg = ExperimentConfig(model=tiny(), seq_len=256, train=TrainConfig(und_batch=2, gen_batch=2, text_batch=0))
    it = make_pipeline(cfg, DataConfig(und=src, gen=src, num_threads=0), shapes_tokenizer(512),
                       process_index=0, process_count=1)
    for _ in range(3):
        b = next(it)
        assert b["gen"]["images"].shape == (2, 32, 32, 3) and b["und"]["pixels"].shape == (2, 32, 32, 3)
    assert it.stats["gen/skipped_empty_caption"] > 0 and it.stats["und/skipped_empty_text"] > 0
    # Refuses to overwrite, names the problem.
    assert main(["data", "build", "--images", str(imgs), "--captions", str(caps), "--out", str(out),
                 "--name", "my_pets"]) == 1
    assert "already holds" in capsys.readouterr().err
    assert main(["data", "build", "--images", str(imgs), "--captions", str(caps), "--out", str(out),
                 "--name", "Bad-Name"]) == 1


def test_text_build(tmp_path):
    from janusflow.data.build import build_text
    f = tmp_path / "t.txt"
    f.write_text("first document\n\nsecond one\n")
    d, stats = build_text(str(f), str(tmp_path / "out"), "my_text", log=lambda *_: None)
    assert stats == {"written_train": 2, "skipped_empty": 1}
    src = open_source(SourceConfig(name=d))
    assert sorted(src[i]["text"] for i in range(len(src))) == [b"first document", b"second one"]
    with pytest.raises(FileNotFoundError):
        build_text(str(tmp_path / "none.txt"), str(tmp_path / "out"), "x")


# ------------------------------------------------------------------ hostile and broken inputs
def _png(path, value=0, size=(8, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size + (3,), value, np.uint8)).save(path)


def _build(tmp_path, lines, *extra, raw=None, name="t"):
    caps = tmp_path / "caps.jsonl"
    if raw is None:
        caps.write_text("".join(json.dumps(x) + "\n" for x in lines))
    else:
        caps.write_bytes(raw)
    return main(["data", "build", "--images", str(tmp_path / "imgs"), "--captions", str(caps),
                 "--out", str(tmp_path / "out"), "--name", name, *extra])


def _stats(out: str) -> dict:
    return json.loads([x for x in out.splitlines() if x.startswith("wrote ")][-1].split(": ", 1)[1])


def _stored(tmp_path, name="t"):
    src = open_source(SourceConfig(name=name, data_dir=str(tmp_path / "out")))
    return [src[i] for i in range(len(src))]


def test_build_refuses_image_paths_outside_images(tmp_path, capsys):
    _png(tmp_path / "imgs" / "a.png")
    _png(tmp_path / "elsewhere" / "x.png", 255)
    (tmp_path / "imgs" / "out_link.png").symlink_to(tmp_path / "elsewhere" / "x.png")
    (tmp_path / "imgs" / "dir_link").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "imgs" / "in_link.png").symlink_to(tmp_path / "imgs" / "a.png")   # stays inside: fine
    lines = [{"image": "../elsewhere/x.png", "caption": "dot-dot"},
             {"image": str(tmp_path / "elsewhere" / "x.png"), "caption": "absolute"},
             {"image": "out_link.png", "caption": "symlink out"},
             {"file_name": "dir_link/x.png", "caption": "through a linked folder"},
             {"image": "sub/../../elsewhere/x.png", "caption": "climbs out"},
             {"image": "a.png", "caption": "ok"},
             {"image": "in_link.png", "caption": "inside link"}]
    assert _build(tmp_path, lines) == 0
    out, err = capsys.readouterr()
    assert _stats(out) == {"skipped_outside_images": 5, "written_train": 2}
    named = [x for x in err.splitlines() if "outside" in x or "absolute" in x]
    assert len(named) == 5
    for n, line in zip((1, 2, 3, 4, 5), named):
        assert line.startswith(f"{tmp_path / 'caps.jsonl'}:{n}: field ")
    assert "field 'file_name'" in named[3]
    recs = _stored(tmp_path)
    assert sorted(r["file_name"].decode() for r in recs) == ["a.png", "in_link.png"]
    assert all(r["image"].max() == 0 for r in recs)          # nothing from elsewhere/ (white)


def test_build_skips_wrongly_typed_and_non_utf8_lines(tmp_path, capsys):
    _png(tmp_path / "imgs" / "a.png")
    good = json.dumps({"image": "a.png", "caption": "good one"}).encode()
    bad = [{"image": "a.png", "caption": 5},
           {"image": "a.png", "caption": {"secret": "value"}},
           {"image": "a.png", "caption": ["fine", 3]},
           {"image": "a.png", "qa": "what is it?"},
           {"image": "a.png", "qa": [{"question": "q", "answer": 7}]},
           {"image": "a.png", "qa": ["not an object"]},
           {"image": "a.png", "conversations": [{"from": "human", "value": 1}]},
           {"image": 12, "caption": "image is a number"},
           {"caption": "no image"},
           [1, 2]]
    raw = (good + b"\n" + b'{"image": "a.png", "caption": "caf\xe9"}\n'
           + b"".join(json.dumps(x).encode() + b"\n" for x in bad) + b"{not json\n" + good + b"\n")
    assert _build(tmp_path, None, raw=raw) == 0
    out, err = capsys.readouterr()
    assert _stats(out) == {"skipped_bad_line": 3, "skipped_bad_field": 9, "written_train": 2}
    caps = str(tmp_path / "caps.jsonl")
    lines = err.splitlines()
    assert len(lines) == 12 and all(x.startswith(caps + ":") and x.endswith("skipped") for x in lines)
    assert lines[0].startswith(f"{caps}:2: not UTF-8")
    assert lines[1].startswith(f"{caps}:3: field 'caption': expected a string or a list of strings, got a number")
    assert lines[2].startswith(f"{caps}:4: field 'caption'")
    assert lines[4].startswith(f"{caps}:6: field 'qa'")
    assert lines[5].startswith(f"{caps}:7: field 'qa[0].answer'")
    assert lines[8].startswith(f"{caps}:10: field 'image'")
    assert lines[9].startswith(f"{caps}:11: field 'image' is missing")
    assert lines[10].startswith(f"{caps}:12: expected a JSON object")
    assert "Traceback" not in err
    stored = [c.decode() for r in _stored(tmp_path) for c in r["caption"]]
    assert stored == ["good one", "good one"]                # the dict's key is not a caption


def test_empty_build_refuses_and_leaves_nothing(tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    lines = [{"image": "missing.png", "caption": "no file"}]
    assert _build(tmp_path, lines) == 1
    err = capsys.readouterr().err
    assert "no example was written" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    # An --out that already holds the user's files keeps exactly them.
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("user data")
    assert _build(tmp_path, lines) == 1
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["mine.txt"]
    # No usable line at all: refused before anything is created.
    assert _build(tmp_path, [{"image": "../x.png", "caption": "out"}], name="u") == 1
    assert "no usable line" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["mine.txt"]
    # A successful build leaves no empty TFDS download folders behind.
    _png(tmp_path / "imgs" / "a.png")
    assert _build(tmp_path, [{"image": "a.png", "caption": "ok"}], name="v") == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["mine.txt", "v"]


@pytest.mark.parametrize("flags,named", [
    (["--short-side", "-5"], "--short-side -5"),
    (["--val-fraction", "1.5"], "--val-fraction 1.5"),
    (["--val-fraction", "nan"], "--val-fraction nan"),
    (["--threads", "0"], "--threads 0"),
    (["--max-pixels", "0"], "--max-pixels 0"),
])
def test_build_names_bad_flag_values(tmp_path, capsys, flags, named):
    _png(tmp_path / "imgs" / "a.png")
    assert _build(tmp_path, [{"image": "a.png", "caption": "ok"}], *flags) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and named in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags,named", [
    (["--train", "-5"], "--train -5"), (["--train", "0"], "--train 0"),
    (["--train", "3", "--validation", "0"], "--validation 0"), (["--validation", "5"], "--validation needs --train"),
    (["--config", "abc", "--train", "3"], "--config 'abc'"), (["--config", "0px", "--train", "3"], "--config 0"),
])
def test_data_shapes_names_bad_flag_values(tmp_path, capsys, flags, named):
    assert main(["data", "shapes", "--out", str(tmp_path / "out"), *flags]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and named in err          # not TFDS's "No examples were yielded"
    assert not (tmp_path / "out").exists()


def test_build_out_that_is_a_file_and_both_sources(tmp_path, capsys):
    _png(tmp_path / "imgs" / "a.png")
    (tmp_path / "out").write_text("a file")
    assert _build(tmp_path, [{"image": "a.png", "caption": "ok"}]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a file" in err
    assert (tmp_path / "out").read_text() == "a file"
    assert _build(tmp_path, [{"image": "a.png", "caption": "ok"}], "--texts", str(tmp_path / "caps.jsonl")) == 2


def test_build_validation_split_that_would_be_empty(tmp_path, capsys):
    _png(tmp_path / "imgs" / "a.png")
    assert _build(tmp_path, [{"image": "a.png", "caption": "ok"}], "--val-fraction", "0.0001") == 1
    assert "leaves split 'validation' empty" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_text_build_typed_and_non_utf8(tmp_path, capsys):
    f = tmp_path / "t.jsonl"
    f.write_bytes(b'{"text": "one"}\n{"text": 5}\n{"text": "caf\xe9"}\n[1]\n{"text": "two"}\n')
    assert main(["data", "build", "--texts", str(f), "--out", str(tmp_path / "out"), "--name", "tx"]) == 0
    out, err = capsys.readouterr()
    assert _stats(out) == {"written_train": 2, "skipped_bad_line": 3}
    assert [w.split(": ")[0] for w in err.splitlines()] == [f"{f}:2", f"{f}:3", f"{f}:4"]
    src = open_source(SourceConfig(name="tx", data_dir=str(tmp_path / "out")))
    assert sorted(src[i]["text"] for i in range(len(src))) == [b"one", b"two"]    # no "5"
    t = tmp_path / "t.txt"
    t.write_bytes(b"first\n\xff\xfe bad\nsecond\n")
    assert main(["data", "build", "--texts", str(t), "--out", str(tmp_path / "out"), "--name", "tt"]) == 0
    assert _stats(capsys.readouterr().out) == {"written_train": 2, "skipped_bad_line": 1}


# ------------------------------------------------------------------ the pixel cap
def _huge_png(path, side=13000):
    """13000 x 13000 (169 MPixel, under Pillow's 179 MPixel bomb limit): ~20 KB as 1-bit PNG,
    1.7 GB once decoded to RGB."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("1", (side, side)).save(path)
    assert path.stat().st_size < 100_000


@pytest.fixture
def decoded_sizes(monkeypatch):
    """Every image size Pillow decodes (ImageFile.load) while the test runs."""
    from PIL import ImageFile
    sizes, real = [], ImageFile.ImageFile.load

    def load(self):
        sizes.append(self.size)
        return real(self)
    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return sizes


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_huge_image_is_refused_before_decoding(tmp_path, capsys, decoded_sizes):
    import time
    _huge_png(tmp_path / "imgs" / "huge.png")
    _png(tmp_path / "imgs" / "a.png")
    t0 = time.perf_counter()
    assert _build(tmp_path, [{"image": "huge.png", "caption": "big"}, {"image": "a.png", "caption": "ok"}]) == 0
    out, err = capsys.readouterr()
    assert _stats(out) == {"skipped_too_large": 1, "written_train": 1}
    assert "caps.jsonl:1: field 'image': 'huge.png': image is 13000 x 13000" in err
    assert max(w * h for w, h in decoded_sizes) < 10**6
    assert time.perf_counter() - t0 < 30          # decoding it alone takes ~8 s on this machine
    # the training pipeline's decoder (records of any TFDS dataset) counts it as too_large
    from janusflow.data.preprocess import BadExample, decode_image
    with pytest.raises(BadExample) as e:
        decode_image((tmp_path / "imgs" / "huge.png").read_bytes())
    assert e.value.reason == "too_large"
    # chat, GenEval scoring and sample grids open images through the same check
    from janusflow.eval.geneval_layout import load_image as layout_image
    from janusflow.sample.chat import load_image as chat_image
    for load in (chat_image, layout_image):
        with pytest.raises(ValueError, match="13000 x 13000 = 169 MPixel, over the cap"):
            load(str(tmp_path / "imgs" / "huge.png"))
    assert main(["chat", "--checkpoint", str(tmp_path / "no_ckpt"), "--image", str(tmp_path / "imgs" / "huge.png"),
                 "--question", "what is it?"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "huge.png" in err and "over the cap" in err
    assert max(w * h for w, h in decoded_sizes) < 10**6


def test_large_jpeg_decodes_reduced_when_short_side_allows(tmp_path, capsys, decoded_sizes):
    (tmp_path / "imgs").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (1200, 1600, 3), dtype=np.uint8)).save(tmp_path / "imgs" / "big.jpg")
    line = [{"image": "big.jpg", "caption": "big"}]
    # 1.9 MPixel is over a 1 MPixel cap: refused at full size ...
    assert _build(tmp_path, line, "--max-pixels", "1000000") == 1
    assert "over the cap" in capsys.readouterr().err
    # ... but with --short-side 100 the JPEG decodes at 1/8 scale (200 x 150), under the cap
    decoded_sizes.clear()
    assert _build(tmp_path, line, "--max-pixels", "1000000", "--short-side", "100") == 0
    assert _stats(capsys.readouterr().out) == {"written_train": 1, "resized": 1}
    assert max(w * h for w, h in decoded_sizes) <= 200 * 150
    assert _stored(tmp_path)[0]["image"].shape == (100, 133, 3)
