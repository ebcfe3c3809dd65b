"""`janusflow data build`: users' images + captions -> a TFDS dataset the pipeline can name."""

import json

import numpy as np
import pytest
from PIL import Image

from janusflow.cli import main
from janusflow.config import ExperimentConfig, TrainConfig
from janusflow.data.pipeline import DataConfig, make_pipeline, shapes_tokenizer
from janusflow.data.sources import SourceConfig, open_source
from janusflow.presets import tiny


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
                                                     {"from": "gpt", "value": "gray noise"}]},
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
    assert [q.decode() for q in recs["c.png"]["qa"]["question"]] == ["Describe."]
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
