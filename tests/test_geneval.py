"""GenEval port: every scoring rule on hand-made detections, aggregation and completeness, the
official prompt file, the layout writer/reader, resumable generation, the adapters and the CLI."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from janusflow.configs.variants import RECTIFIED_FLOW
from janusflow.shapes import world as S
from janusflow.eval import geneval, geneval_layout as L
from janusflow.eval.geneval_score import (Det, IncompleteResultsError, ScoreParams, evaluate,
                                          filter_detections, score_image, summarize)

DATA = Path(L.OFFICIAL_METADATA).parent        # shipped with the package
IMG = np.zeros((100, 100, 3), np.uint8)


def det(x0, y0, x1, y1, score=0.95, color=None):
    return Det(np.array([x0, y0, x1, y1, score], float), None, color)


class Colors:
    """Colour classifier stub: the colour stored on each detection; records its calls."""
    def __init__(self):
        self.calls = []

    def classify(self, image, dets, classname):
        self.calls.append((classname, len(dets)))
        return [d.color for d in dets]


def run(raw, meta, params=ScoreParams()):
    return evaluate(IMG, filter_detections(raw, meta["tag"], params), meta, Colors(), params)


# ------------------------------------------------------------------ scoring rules


def test_count_with_exclude():
    meta = S.meta_counting("cup", 2)  # include cup>=2, exclude cup>=3
    two = [det(0, 0, 10, 10), det(30, 0, 40, 10)]
    assert run({"cup": two}, meta) == (True, "")
    ok, reason = run({"cup": two[:1]}, meta)
    assert not ok and reason == "expected cup>=2, found 1"
    ok, reason = run({"cup": two + [det(60, 0, 70, 10)]}, meta)
    assert not ok and reason == "expected cup<3, found 3"


def test_missing_detections_fail():
    meta = S.meta_two("cat", "dog")
    ok, reason = run({"cat": [det(0, 0, 10, 10)]}, meta)
    assert not ok and reason == "expected dog>=1, found 0"
    assert run({}, S.meta_single("cat"))[0] is False


def test_thresholds_point_three_and_point_nine_in_counting_images():
    single = S.meta_single("cat")
    assert run({"cat": [det(0, 0, 9, 9, 0.31)]}, single)[0]
    assert not run({"cat": [det(0, 0, 9, 9, 0.3)]}, single)[0]          # strictly above
    counting = S.meta_counting("cat", 2)
    assert not run({"cat": [det(0, 0, 9, 9, 0.95), det(20, 0, 29, 9, 0.85)]}, counting)[0]
    assert run({"cat": [det(0, 0, 9, 9, 0.95), det(20, 0, 29, 9, 0.91)]}, counting)[0]
    # 0.9 holds for every class in a counting image: a 0.85 third cat does not trigger exclude
    three = [det(0, 0, 9, 9), det(20, 0, 29, 9), det(40, 0, 49, 9, 0.85)]
    assert run({"cat": three}, counting)[0]
    kept = filter_detections({"dog": [det(0, 0, 9, 9, 0.5)]}, "counting")
    assert kept == {}
    assert list(filter_detections({"dog": [det(0, 0, 9, 9, 0.5)]}, "two_object")) == ["dog"]


def test_max_sixteen_per_class_sorted_by_score():
    dets = [det(i, 0, i + 5, 5, 0.4 + 0.02 * i) for i in range(20)]
    kept = filter_detections({"cup": dets}, "single_object")["cup"]
    assert len(kept) == 16
    assert [d.score for d in kept] == sorted((d.score for d in dets), reverse=True)[:16]
    # the cap hides the 17th+ detection from exclude clauses too
    meta = {"tag": "x", "include": [], "exclude": [{"class": "cup", "count": 17}], "prompt": ""}
    assert run({"cup": dets}, meta)[0]


def test_overlap_suppression_is_off_by_default_but_implemented():
    dets = [det(0, 0, 10, 10, 0.9), det(1, 0, 11, 10, 0.8), det(50, 50, 60, 60, 0.7)]
    assert len(filter_detections({"cup": dets}, "single_object")["cup"]) == 3
    kept = filter_detections({"cup": dets}, "single_object", ScoreParams(max_overlap=0.5))["cup"]
    assert [d.score for d in kept] == [0.9, 0.7]


def test_position_both_ways_and_margin():
    meta = S.meta_position("dog", "left of", "cat")  # include[0] = cat, include[1] = dog
    cat, dog_left, dog_right = det(60, 40, 80, 60), det(0, 40, 20, 60), det(90, 40, 99, 60)
    assert run({"cat": [cat], "dog": [dog_left]}, meta) == (True, "")
    ok, reason = run({"cat": [cat], "dog": [dog_right]}, meta)
    assert not ok and reason == "expected dog left of target, found right of target"
    assert run({"cat": [cat], "dog": [dog_right]}, S.meta_position("dog", "right of", "cat"))[0]
    # centres 2 px apart, boxes 20 wide: |offset| < 0.1 * (20 + 20) -> no relation at all
    ok, reason = run({"cat": [cat], "dog": [det(58, 40, 78, 60)]}, meta)
    assert not ok and reason == "expected dog left of target, found no relation to target"
    # a diagonal offset can satisfy two relations at once
    diag = {"cat": [cat], "dog": [det(20, 0, 40, 20)]}   # offset (-40, -40): both axes hold
    assert run(diag, meta)[0] and run(diag, S.meta_position("dog", "above", "cat"))[0]
    assert not run(diag, S.meta_position("dog", "below", "cat"))[0]


def test_position_needs_a_matched_target_and_checks_every_pair():
    meta = S.meta_position("dog", "left of", "cat")
    ok, reason = run({"dog": [det(0, 0, 10, 10)]}, meta)
    assert not ok and reason == "expected cat>=1, found 0\nno target for dog to be left of"
    meta2 = {"tag": "position", "prompt": "",
             "include": [{"class": "cat", "count": 2}, {"class": "dog", "count": 1, "position": ["left of", 0]}]}
    cats = [det(60, 40, 80, 60, 0.9), det(5, 80, 25, 99, 0.8)]   # second cat below-left of the dog
    assert not run({"cat": cats, "dog": [det(0, 40, 20, 60)]}, meta2)[0]
    assert run({"cat": [cats[0], det(70, 0, 90, 20, 0.8)], "dog": [det(0, 40, 20, 60)]}, meta2)[0]


def test_colour_checked_on_the_top_count_detections():
    meta = S.meta_colors("car", "red")
    clf = Colors()
    kept = filter_detections({"car": [det(0, 0, 9, 9, 0.9, "red"), det(20, 0, 29, 9, 0.95, "blue")]}, "colors")
    ok, reason = evaluate(IMG, kept, meta, clf)
    assert not ok and reason == "expected red car>=1, found 0 red; and 1 blue"
    assert clf.calls == [("car", 1)]                                    # only the best one
    assert run({"car": [det(0, 0, 9, 9, 0.9, "red")]}, meta)[0]
    attr = S.meta_color_attr("car", "red", "bus", "blue")
    assert not run({"car": [det(0, 0, 9, 9, 0.9, "blue")], "bus": [det(20, 0, 29, 9, 0.9, "red")]}, attr)[0]
    assert run({"car": [det(0, 0, 9, 9, 0.9, "red")], "bus": [det(20, 0, 29, 9, 0.9, "blue")]}, attr)[0]
    with pytest.raises(ValueError, match="colour classifier"):
        evaluate(IMG, kept, meta, None)


def test_results_record_has_the_official_schema():
    meta = S.meta_single("cat")
    r = score_image(IMG, {"cat": [det(0, 0, 9, 9, 0.8)], "dog": [det(0, 0, 9, 9, 0.1)]}, meta,
                    filename="out/00000/samples/0000.png")
    assert list(r) == ["filename", "tag", "prompt", "correct", "reason", "metadata", "details"]
    assert r["correct"] is True and json.loads(r["metadata"]) == meta
    assert json.loads(r["details"]) == {"cat": [[0.0, 0.0, 9.0, 9.0, 0.8]]}


# ------------------------------------------------------------------ aggregation


def _records(correct_by_tag, n=2):
    """One prompt per entry; each entry a list of per-image correctness."""
    out, idx = [], 0
    for tag, prompts in correct_by_tag.items():
        for flags in prompts:
            meta = {"tag": tag, "include": [], "prompt": f"p{idx}"}
            for k, c in enumerate(flags):
                out.append({"filename": f"o/{idx:05d}/samples/{k:04d}.png", "tag": tag, "prompt": f"p{idx}",
                            "correct": bool(c), "reason": "", "metadata": json.dumps(meta), "details": "{}"})
            idx += 1
    return out


TAGS6 = {"single_object": [[1, 1], [1, 1]], "two_object": [[1, 0], [0, 0]],
         "counting": [[0, 0], [0, 1]], "colors": [[1, 1], [1, 0]], "position": [[0, 0], [0, 0]],
         "color_attr": [[1, 0], [1, 0]]}


def test_aggregation_matches_hand_computed_numbers(tmp_path):
    recs = _records(TAGS6)
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    s = summarize(str(path))
    assert list(s["per_tag"]) == list(TAGS6)
    assert s["per_tag"] == {"single_object": 1.0, "two_object": 0.25, "counting": 0.25,
                            "colors": 0.75, "position": 0.0, "color_attr": 0.5}
    assert s["overall"] == pytest.approx(2.75 / 6)
    assert s["n_images"] == 24 and s["n_prompts"] == 12
    assert s["correct_images"] == pytest.approx(11 / 24)
    assert s["correct_prompts"] == pytest.approx(8 / 12)


def test_incomplete_results_refuse_an_overall():
    recs = _records(TAGS6)
    with pytest.raises(IncompleteResultsError, match="prompt 00003 'p3': 1 of 2 images"):
        summarize(recs[:7] + recs[8:])
    no_pos = [r for r in recs if r["tag"] != "position"]
    with pytest.raises(IncompleteResultsError, match="tag 'position' has no results"):
        summarize(no_pos)
    s = summarize(no_pos, strict=False)
    assert s["overall"] is None and s["per_tag"]["colors"] == 0.75 and not s["complete"]
    expected = [json.loads(r["metadata"]) for r in recs[::2]]
    assert summarize(recs, expected, 2)["overall"] == pytest.approx(2.75 / 6)
    with pytest.raises(IncompleteResultsError, match=r"prompt 00011 \(color_attr: 'p11'\): no images"):
        summarize(recs[:-2], expected, 2)
    with pytest.raises(IncompleteResultsError, match="2 of 3 images"):
        summarize(recs, expected, 3)


@pytest.fixture(scope="module")
def official():
    return L.load_prompts()          # the default: the official list shipped with the package


def test_official_prompt_file(official):
    prompts, md5 = official
    assert len(prompts) == 553 and md5 == "9a0ed515640279a48ed3380d90aec0ed"
    from collections import Counter
    assert list(Counter(p["tag"] for p in prompts).items()) == [
        ("single_object", 80), ("two_object", 99), ("counting", 80), ("colors", 94),
        ("position", 100), ("color_attr", 100)]
    for p in prompts:
        if p["tag"] == "position":
            rel, g = p["include"][1]["position"]
            assert g == 0 and p["prompt"].endswith(f"{rel} {S.with_article(p['include'][0]['class'])}")
        if p["tag"] == "counting":
            assert p["exclude"][0]["count"] == p["include"][0]["count"] + 1
    names = (DATA / "object_names.txt").read_text().split("\n")
    assert {e["class"] for p in prompts for e in p["include"]} <= set(names)
    # a full synthetic run of the official prompts aggregates; one missing image refuses
    recs = [{"filename": f"o/{i:05d}/samples/{k:04d}.png", "tag": p["tag"], "prompt": p["prompt"],
             "correct": (i + k) % 3 == 0, "reason": "", "metadata": json.dumps(p), "details": "{}"}
            for i, p in enumerate(prompts) for k in range(4)]
    s = summarize(recs, prompts, 4)
    assert s["n_images"] == 2212 and s["overall"] is not None
    with pytest.raises(IncompleteResultsError, match="00100"):
        summarize(recs[:400] + recs[401:], prompts, 4)


# ------------------------------------------------------------------ layout


PROTO = {"checkpoint": "/x", "metadata_md5": "abc", "cfg": 2.0, "steps": 30, "seed": 0,
         "resolution": 32, "solver": "euler", "n": 2}


def gt_fn(calls=None, size=32):
    def fn(items):
        if calls is not None:
            calls.append([(it["index"], it["k"]) for it in items])
        out = []
        for it in items:
            rng = np.random.default_rng(it["seed"])
            out.append(S.render(S.scene_from_metadata(it["metadata"], rng, size), size))
        return np.stack(out)
    return fn


def test_layout_writer_reader_resume_and_protocol(tmp_path):
    prompts = S.prompt_set("val", 2, 0)
    out = str(tmp_path / "run")
    calls = []
    stats = L.generate_layout(out, prompts, PROTO, gt_fn(calls), n=2, batch_size=5, progress=False)
    assert stats == {"generated": 24, "skipped": 0, "total": 24}
    assert [len(c) for c in calls] == [5, 5, 5, 5, 4]
    assert sorted(os.listdir(out))[:2] == ["00000", "00001"]
    assert os.path.exists(os.path.join(out, "00011", "samples", "0001.png"))
    # junk the official reader must ignore
    os.makedirs(os.path.join(out, "extra", "samples"))
    Path(out, "00000", "samples", "grid.png").write_bytes(b"x")
    Path(out, "00000", "samples", "tmp-0003.png").write_bytes(b"x")
    items = L.read_layout(out)
    assert len(items) == 24
    assert [m for _, m in items[::2]] == prompts
    assert items[0][0] == os.path.join(out, "00000", "samples", "0000.png")
    img = L.load_image(items[0][0])
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    # resume: nothing to do; then only the deleted image is regenerated, identically
    calls.clear()
    assert L.generate_layout(out, prompts, PROTO, gt_fn(calls), n=2, progress=False)["generated"] == 0
    before = Path(out, "00004", "samples", "0001.png").read_bytes()
    os.remove(os.path.join(out, "00004", "samples", "0001.png"))
    assert L.generate_layout(out, prompts, PROTO, gt_fn(calls), n=2, batch_size=1, progress=False)["generated"] == 1
    assert calls == [[(4, 1)]]
    assert Path(out, "00004", "samples", "0001.png").read_bytes() == before
    # a different protocol, a foreign folder, a different prompt list are refused
    with pytest.raises(L.ProtocolMismatch, match="cfg"):
        L.generate_layout(out, prompts, dict(PROTO, cfg=5.0), gt_fn(), n=2, progress=False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("x")
    with pytest.raises(L.ProtocolMismatch, match="no protocol.json"):
        L.generate_layout(str(foreign), prompts, PROTO, gt_fn(), n=2, progress=False)
    with pytest.raises(L.ProtocolMismatch, match="different prompt"):
        L.generate_layout(out, prompts[::-1], PROTO, gt_fn(), n=2, progress=False)


def test_image_seeds_do_not_depend_on_batching(tmp_path):
    prompts = S.prompt_set("val", 1, 4)
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    L.generate_layout(a, prompts, PROTO, gt_fn(), n=2, batch_size=1, progress=False)
    L.generate_layout(b, prompts, PROTO, gt_fn(), n=2, batch_size=7, progress=False)
    for (pa, _), (pb, _) in zip(L.read_layout(a), L.read_layout(b)):
        assert Path(pa).read_bytes() == Path(pb).read_bytes()
    assert L.image_seed(0, 1, 2) != L.image_seed(0, 2, 1)


# ------------------------------------------------------------------ generation through the model API


class FakeTok:
    pad_id = 7

    def encode(self, text, add_bos=True):
        return [1] + [ord(c) for c in text]

    def decode(self, ids):
        return "".join(chr(i) for i in ids[1:])


class FakeCfg:
    image_size, latent_size = 32, 32
    head = RECTIFIED_FLOW           # ModelConfig.head: the flow sampler, its CFG weight

    class vae:
        channels = 3


def fake_generate(log):
    """Stands in for janusflow.sample.generate.generate: renders the prompt's ground truth."""
    def generate(model, vae, cfg, prompt_ids, *, cfg_weight, steps, noise, seed, solver, batch_size,
                 progress, pad_id):
        log.append(dict(n=len(prompt_ids), cfg_weight=cfg_weight, steps=steps, solver=solver,
                        pad_id=pad_id, noise=noise.copy(), batch_size=batch_size))
        assert noise.shape == (len(prompt_ids), 32, 32, 3) and noise.dtype == np.float32
        out = []
        for ids, z in zip(prompt_ids, noise):
            text = FakeTok().decode(ids).split(": ", 1)[1].split("\n")[0]
            meta = model[text]
            rng = np.random.default_rng(int(abs(z[0, 0, 0]) * 1e6))
            out.append(S.render(S.scene_from_metadata(meta, rng, 32), 32))
        return np.stack(out)
    return generate


def test_generate_then_score_end_to_end(tmp_path, capsys):
    prompts = S.prompt_set("val", 2, 1)
    mfile = tmp_path / "prompts.jsonl"
    mfile.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    table = {p["prompt"]: p for p in prompts}
    out, log = str(tmp_path / "gen"), []
    stats = geneval.run_generate("ckpt", str(mfile), out, n=2, cfg_weight=3.0, steps=5, seed=1,
                                 batch_size=4, generator=(table, None, FakeCfg, FakeTok()),
                                 generate=fake_generate(log), progress=False)
    assert stats["generated"] == 24 and len(log) == 6
    assert {(e["cfg_weight"], e["steps"], e["solver"], e["pad_id"]) for e in log} == {(3.0, 5, "euler", 7)}
    first = log[0]["noise"][0]
    assert np.array_equal(first, np.random.default_rng(L.image_seed(1, 0, 0)).standard_normal((32, 32, 3), dtype=np.float32))
    proto = json.loads(Path(out, "protocol.json").read_text())
    assert proto["cfg"] == 3.0 and proto["steps"] == 5 and proto["n"] == 2 and proto["resolution"] == 32
    assert proto["metadata_md5"] == L.load_prompts(str(mfile))[1]
    s = geneval.run_score(out, detector="shapes", colors="shapes")
    assert s["overall"] == 1.0 and s["n_images"] == 24
    from janusflow.cli.main import main
    assert main(["eval", "geneval", "summarize", os.path.join(out, "results.jsonl"),
                 "--metadata", str(mfile), "--n", "2"]) == 0
    assert "overall (mean over tags): 1.00000" in capsys.readouterr().out
    os.remove(os.path.join(out, "00003", "samples", "0000.png"))
    assert main(["eval", "geneval", "score", "--outdir", out, "--detector", "shapes",
                 "--colors", "shapes"]) == 1
    assert "00003" in capsys.readouterr().err


# ------------------------------------------------------------------ detector adapters


def _layout_with_known_images(tmp_path):
    prompts = [S.meta_colors("star", "red"), S.meta_counting("circle", 2)]
    out = str(tmp_path / "lay")
    L.generate_layout(out, prompts, PROTO, gt_fn(), n=1, progress=False)
    return out, prompts


def test_precomputed_json_and_npz(tmp_path, capsys):
    out, prompts = _layout_with_known_images(tmp_path)
    data = {"images": {"00000/samples/0000.png": {"star": [[1, 1, 9, 9, 0.8]]},
                       "00001/samples/0000.png": {"circle": [[0, 0, 5, 5, 0.95], [9, 9, 15, 15, 0.5]]}},
            "colors": {"00000/samples/0000.png": {"star": ["red"]}}}
    jpath = tmp_path / "det.json"
    jpath.write_text(json.dumps(data))
    res = geneval.score_layout(out, geneval.PrecomputedDetections(str(jpath), out), geneval.PrecomputedColors())
    assert [r["correct"] for r in res] == [True, False]          # the 0.5 circle misses 0.9
    assert res[1]["reason"] == "expected circle>=2, found 1"
    arrays = {"00000/samples/0000.png|star|boxes": np.array([[1, 1, 9, 9, 0.8]]),
              "00000/samples/0000.png|star|colors": np.array(["blue"]),
              "00000/samples/0000.png|star|masks": np.ones((1, 32, 32), bool),
              "00001/samples/0000.png|": np.zeros(0)}
    npath = tmp_path / "det.npz"
    np.savez(npath, **arrays)
    pre = geneval.PrecomputedDetections(str(npath), out)
    res = geneval.score_layout(out, pre, geneval.PrecomputedColors())
    assert [r["correct"] for r in res] == [False, False]
    assert "found 0 red; and 1 blue" in res[0]["reason"]
    assert pre.detect(None, os.path.join(out, "00001/samples/0000.png")) == {}
    with pytest.raises(KeyError, match="no detections"):
        pre.detect(None, os.path.join(out, "00005/samples/0000.png"))
    del data["colors"]
    jpath.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="no colour"):
        geneval.score_layout(out, geneval.PrecomputedDetections(str(jpath), out), geneval.PrecomputedColors())
    # CLI: precomputed boxes + the pixel colour classifier
    from janusflow.cli.main import main
    assert main(["eval", "geneval", "score", "--outdir", out, "--detections", str(jpath),
                 "--colors", "shapes", "--allow-incomplete"]) == 0
    assert "colors" in capsys.readouterr().out


def test_official_model_adapters_name_missing_packages(tmp_path):
    try:
        import mmdet  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="'mmdet'"):
            geneval.Mask2FormerDetector("x.pth", str(tmp_path / "names.txt"))
    try:
        import open_clip  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="'open_clip'"):
            geneval.ClipColorClassifier()


def test_generate_with_a_real_tiny_model(tmp_path):
    """The real sampling path (janusflow.sample.generate) through the layout writer, with a
    random tiny model built abstractly (eager init is slow) and a locally trained tokenizer."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from janusflow.configs import presets
    from janusflow.data.tokenizer import build_tiny_tokenizer, generation_prompt_ids
    from janusflow.models.janusflow import JanusFlow
    from janusflow.models.vae import make_vae
    from janusflow.sample.generate import generate
    cfg = presets.tiny()
    graph, state = nnx.split(nnx.eval_shape(lambda: JanusFlow(cfg, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(0)
    model = nnx.merge(graph, jax.tree.map(
        lambda a: jnp.asarray((rng.standard_normal(a.shape) * 0.02).astype(a.dtype)), state))
    vae = make_vae(cfg.vae, rngs=nnx.Rngs(0))
    tok = build_tiny_tokenizer([f"User: {p['prompt']}\n\nAssistant:" for t in S.TAGS
                                for p in S.prompts_for(t)[:30]], cfg.llm.vocab_size)
    prompts = S.prompt_set("val", 1, 0)[:2]
    mfile = tmp_path / "p.jsonl"
    mfile.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    out = str(tmp_path / "gen")
    stats = geneval.run_generate("ckpt", str(mfile), out, n=2, steps=1, batch_size=4,
                                 generator=(model, vae, cfg, tok), progress=False)
    assert stats["generated"] == 4
    items = L.read_layout(out)
    got = np.stack([L.load_image(p) for p, _ in items])
    assert got.shape == (4, 32, 32, 3) and not np.array_equal(got[0], got[1])
    noise = np.stack([np.random.default_rng(L.image_seed(0, i, k)).standard_normal((32, 32, 3), dtype=np.float32)
                      for i in range(2) for k in range(2)])
    ids = [generation_prompt_ids(tok, p["prompt"], cfg.head) for p in prompts for _ in range(2)]
    ref = generate(model, vae, cfg, ids, cfg_weight=2.0, steps=1, noise=noise, solver="euler",
                   batch_size=4, progress=False, pad_id=tok.pad_id)
    assert np.array_equal(got, ref)


def test_clip_colour_classifier_plumbing(monkeypatch):
    """ClipColorClassifier with a stand-in ``open_clip`` (no weights here): the crop is the
    image composited over #999 through the mask, then cut to the box; each colour's head is
    the normalised mean of its three prompt embeddings."""
    torch = pytest.importorskip("torch")
    import sys
    import types
    from janusflow.eval.geneval_score import GENEVAL_COLORS
    seen = []

    class Model:
        def eval(self):
            return self

        def encode_text(self, toks):
            return torch.nn.functional.one_hot(toks, 10).float() + 0.01

        def encode_image(self, x):  # x: (B, 3) mean RGB of each crop
            pal = torch.tensor([S.PALETTE[c] for c in GENEVAL_COLORS], dtype=torch.float32)
            return torch.nn.functional.one_hot(torch.cdist(x, pal).argmin(1), 10).float()

    def transform(im):
        seen.append(im.size)
        return torch.tensor(np.asarray(im, np.float32).reshape(-1, 3).mean(0))

    def tokenizer(texts):
        assert len(texts) == 3 and texts[2].endswith(" object")
        return torch.tensor([next(i for i, c in enumerate(GENEVAL_COLORS) if f" {c}" in t) for t in texts])

    fake = types.SimpleNamespace(create_model_and_transforms=lambda arch, pretrained, device: (Model(), None, transform),
                                 get_tokenizer=lambda arch: tokenizer)
    monkeypatch.setitem(sys.modules, "open_clip", fake)
    clf = geneval.ClipColorClassifier()
    img = np.full((40, 40, 3), 153, np.uint8)
    img[0:20, 0:20] = S.PALETTE["red"]
    img[0:20, 20:40] = S.PALETTE["blue"]
    mask = np.zeros((40, 40), bool)
    mask[0:20, 0:20] = True
    box = Det(np.array([0, 0, 40, 20, 0.9]), mask)                 # box spans red + blue
    assert clf.classify(img, [box], "car") == ["red"]              # the mask keeps only red
    assert seen == [(40, 20)]
    assert clf.classify(img, [Det(np.array([20, 0, 40, 20, 0.9]))], "car") == ["blue"]
    assert clf.classify(img, [], "car") == []


# ------------------------------------------------------------ strict results records
def _write(path, lines):
    path.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines))
    return str(path)


def test_shipped_prompt_list_and_license():
    assert (DATA / "LICENSE").read_text().startswith("MIT License")
    assert L.load_prompts()[1] == "9a0ed515640279a48ed3380d90aec0ed"
    assert len((DATA / "object_names.txt").read_text().split()) >= 80 and (DATA / "README.md").is_file()


@pytest.mark.parametrize("change,field", [
    (lambda r: r.update(correct="false"), "correct: expected true or false, got 'false'"),
    (lambda r: r.update(correct=1), "correct: expected true or false, got 1"),
    (lambda r: r.pop("tag"), "tag: missing"),
    (lambda r: r.pop("correct"), "correct: missing"),
    (lambda r: r.update(metadata="{oops"), "metadata: not a JSON string of the prompt object"),
    (lambda r: r.update(metadata="[1]"), "metadata: expected the prompt object, got list"),
    (lambda r: r.update(filename=7), "filename: expected a string, got 7"),
])
def test_bad_record_is_named_skipped_and_counted(tmp_path, change, field):
    recs = _records(TAGS6)
    bad = dict(recs[4])                         # two_object, prompt 2, image 0: correct
    assert bad["tag"] == "two_object" and bad["correct"] is True
    change(bad)
    lines = recs[:4] + [bad] + recs[5:]
    path = _write(tmp_path / "r.jsonl", lines)
    expected = [json.loads(r["metadata"]) for r in recs[::2]]
    with pytest.raises(IncompleteResultsError, match=rf"{path}:5: {field}"):
        summarize(path, expected, 2)
    s = summarize(path, expected, 2, strict=False)
    assert s["bad_records"] == 1 and s["n_images"] == 23 and not s["complete"] and s["overall"] is None
    assert s["counts"]["two_object"] == (0, 3)      # the bad record is not counted as correct


def test_non_object_and_non_json_lines(tmp_path):
    recs = _records(TAGS6)
    path = _write(tmp_path / "r.jsonl", recs[:5] + [[1, 2], "{not json", "3"] + recs[5:])
    s = summarize(path, strict=False)
    assert s["bad_records"] == 3 and s["n_images"] == 24
    assert s["problems"][:3] == [f"{path}:6: expected a JSON object, got list",
                                 f"{path}:7: invalid JSON (Expecting property name enclosed in double quotes, column 2)",
                                 f"{path}:8: expected a JSON object, got int"]


def test_duplicated_line_detected_not_counted(tmp_path):
    recs = _records(TAGS6)
    expected = [json.loads(r["metadata"]) for r in recs[::2]]
    path = _write(tmp_path / "r.jsonl", recs[:4] + [recs[3]] + recs[4:])
    s = summarize(path, expected, strict=False)
    assert s["duplicate_records"] == 1 and s["n_images"] == 24
    assert s["problems"] == [f"{path}:5: filename: 'o/00001/samples/0001.png' repeats {path}:4; skipped"]
    assert s["per_tag"]["single_object"] == 1.0 and s["counts"]["single_object"] == (4, 4)
    flipped = dict(recs[3], correct=not recs[3]["correct"])
    path = _write(tmp_path / "r2.jsonl", recs + [flipped])
    assert "contradicts" in summarize(path, expected, strict=False)["problems"][0]


def _official_results(tmp_path, drop=()):
    prompts = L.load_prompts()[0]
    recs = [{"filename": f"o/{i:05d}/samples/0000.png", "tag": p["tag"], "prompt": p["prompt"],
             "correct": True, "reason": "", "metadata": json.dumps(p), "details": "{}"}
            for i, p in enumerate(prompts) if i not in drop]
    return _write(tmp_path / "results.jsonl", recs)


def test_cli_summarize_checks_against_the_shipped_list_by_default(tmp_path, capsys):
    from janusflow.cli.main import main
    path = _official_results(tmp_path)
    assert main(["eval", "geneval", "summarize", path]) == 0
    assert "overall (mean over tags): 1.00000" in capsys.readouterr().out
    path = _official_results(tmp_path, drop=(17, 400))
    assert main(["eval", "geneval", "summarize", path]) == 1
    err = capsys.readouterr().err
    assert "2 of 553 prompts of the prompt file have no results" in err and "Traceback" not in err
    assert main(["eval", "geneval", "summarize", path, "--allow-incomplete"]) == 0
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert out["complete"] is False and out["overall"] is None and out["n_prompts"] == 551
    mfile = _write(tmp_path / "mine.jsonl", [p for i, p in enumerate(L.load_prompts()[0]) if i < 17])
    small = _write(tmp_path / "r17.jsonl", [json.loads(l) for l in open(path).read().splitlines()[:17]])
    assert main(["eval", "geneval", "summarize", small, "--metadata", mfile]) == 0       # override


def test_cli_summarize_bad_record_is_one_line(tmp_path, capsys):
    from janusflow.cli.main import main
    recs = _records(TAGS6)
    del recs[3]["tag"]
    path = _write(tmp_path / "r.jsonl", recs)
    meta = _write(tmp_path / "m.jsonl", [json.loads(r["metadata"]) for r in _records(TAGS6)[::2]])
    assert main(["eval", "geneval", "summarize", path, "--metadata", meta]) == 1
    err = capsys.readouterr().err
    assert f"{path}:4: tag: missing" in err and "Traceback" not in err and "'tag'" not in err.split(":4:")[0]
