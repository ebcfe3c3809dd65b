"""Users' files as an attack surface: typed JSON records (records.py), paths confined to the
folder they must stay in (paths.confined / plain_name), and the places that read them."""

import json

import pytest

from janusflow import paths


def test_record_fields_are_typed_and_errors_name_file_line_field():
    from janusflow.records import Record, RecordError
    rec = Record({"ok": True, "s": "false", "n": 3, "f": 1.5, "b": 1, "inf": float("inf"), "none": None,
                  "caps": ["a", 2], "qa": [{"answer": 7}], "obj": [1]}, "f.jsonl:4")
    assert rec.get_bool("ok") is True
    with pytest.raises(RecordError, match=r"^f\.jsonl:4: field 's': expected true or false, got a string"):
        rec.get_bool("s")                    # "false" is not false, and not true either
    with pytest.raises(RecordError, match="field 'b': expected true or false, got a number"):
        rec.get_bool("b")
    assert rec.get_int("n") == 3 and rec.get_float("n") == 3.0 and rec.get_float("f") == 1.5
    with pytest.raises(RecordError, match="field 'ok': expected an integer"):
        rec.get_int("ok")                    # bool is not an int
    with pytest.raises(RecordError, match="field 'inf': expected a finite number"):
        rec.get_float("inf")
    with pytest.raises(RecordError, match="field 'n': expected an integer >= 5"):
        rec.get_int("n", minimum=5)
    assert rec.get_str("none", "dflt") == "dflt" and rec.get_str("absent", "") == ""
    with pytest.raises(RecordError, match="field 'absent' is missing"):
        rec.get_str("absent")
    assert rec.get_str_list("s") == ["false"]
    with pytest.raises(RecordError, match="field 'caps': expected a string or a list of strings"):
        rec.get_str_list("caps")
    with pytest.raises(RecordError, match=r"field 'qa\[0\]\.answer': expected a string, got a number"):
        rec.get_objs("qa")[0].get_str("answer")
    with pytest.raises(RecordError, match=r"field 'obj\[0\]': expected an object"):
        rec.get_objs("obj")
    with pytest.raises(RecordError, match="field 'n': expected an object"):
        rec.get_obj("n")
    with pytest.raises(RecordError, match="expected a JSON object, got a list"):
        Record([1], "x:1")


def test_iter_jsonl_names_each_bad_line_and_goes_on(tmp_path):
    from janusflow.records import iter_jsonl, iter_text_lines
    f = tmp_path / "r.jsonl"
    f.write_bytes(b'{"a": 1}\n\n\xff{"a": 2}\n{cut\n[1, 2]\n' + b'{"a": "' + b"x" * 300 + b'"}\n{"a": 3}\n')
    out = list(iter_jsonl(str(f), max_line_bytes=200))
    kinds = [(n, type(r).__name__) for n, r in out]
    assert kinds == [(1, "Record"), (3, "RecordError"), (4, "RecordError"), (5, "RecordError"),
                     (6, "RecordError"), (7, "Record")]
    msgs = [str(r) for _, r in out]
    assert msgs[1] == f"{f}:3: not UTF-8 (byte 0xff at column 1)"
    assert msgs[2].startswith(f"{f}:4: not valid JSON")
    assert msgs[3] == f"{f}:5: expected a JSON object, got a list"
    assert msgs[4].startswith(f"{f}:6: line longer than 200 bytes")
    assert out[-1][1].get_int("a") == 3
    f.write_bytes(b'\xef\xbb\xbf{"a": 1}\r\n')                    # BOM and CRLF from a Windows editor
    assert [r.get_int("a") for _, r in iter_jsonl(str(f))] == [1]
    t = tmp_path / "t.txt"
    t.write_bytes(b"one\r\n\xc3(\nthree")
    assert [(n, r if isinstance(r, str) else "err") for n, r in iter_text_lines(str(t))] == [
        (1, "one"), (2, "err"), (3, "three")]


def test_confined_refuses_every_way_out(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "a.png").write_bytes(b"x")
    (tmp_path / "secret").write_bytes(b"s")
    (root / "link_out").symlink_to(tmp_path / "secret")
    (root / "dir_out").symlink_to(tmp_path)
    (root / "link_in").symlink_to(root / "a.png")
    r = str(root)
    assert paths.confined(r, "a.png") == str(root / "a.png")
    assert paths.confined(r, "sub/../a.png") == str(root / "a.png")
    assert paths.confined(r, "link_in") == str(root / "a.png")           # resolved: what is opened
    assert paths.confined(r, "missing.png") == str(root / "missing.png")  # missing is the reader's business
    for bad, why in [("../secret", "leads outside"), ("sub/../../secret", "leads outside"),
                     (str(tmp_path / "secret"), "absolute"), ("link_out", "symlink"),
                     ("dir_out/secret", "symlink"), ("", "not a relative path"), ("a\0b", "not a relative"),
                     ("gs://bucket/x", "absolute"), (5, "not a relative path")]:
        with pytest.raises(paths.OutsideRoot, match=why):
            paths.confined(r, bad)
    # lexical only (the Hugging Face cache links snapshots to blobs/ outside by design)
    assert paths.confined(r, "link_out", follow_symlinks=False) == str(root / "link_out")
    with pytest.raises(paths.OutsideRoot):
        paths.confined(r, "../secret", follow_symlinks=False)
    # a root that is itself a symlink still confines to where it points
    (tmp_path / "root_link").symlink_to(root)
    assert paths.confined(str(tmp_path / "root_link"), "a.png") == str(root / "a.png")


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "../x", "/abs", "a\0"])
def test_plain_name_refuses(name):
    with pytest.raises(paths.OutsideRoot, match="plain file name"):
        paths.plain_name(name)


def test_sweep_member_named_dotdot_is_refused(tmp_path):
    from janusflow.train import sweep
    from janusflow.configs.schema import ConfigError
    exp = tmp_path / "exp.py"
    exp.write_text("def sweep(arg):\n    return [{'name': '..', 'arg': 'x'}]\n")
    with pytest.raises(ConfigError, match=r"sweep\(\)\[0\] name '\.\.' must be a plain file name"):
        sweep.load_members(str(exp))


def test_sweep_results_ignore_wrongly_typed_metrics(tmp_path):
    from janusflow.train import sweep_results
    d = tmp_path / "A"
    d.mkdir()
    rows = [{"step": 1, "loss_ar": 2.0}, [1, 2], {"step": True, "loss_ar": 9.0},
            {"step": 2, "loss_ar": True}, {"step": 3, "loss_ar": 1.0}]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "lo')
    (d / "results.json").write_text(json.dumps({"final": [1], "total_minutes": 2.0}))
    rec = sweep_results.run_record(str(d), spec="x.py", member={"name": "A", "arg": "A"}, seed=0, seeds={},
                                   overrides=[], sha="s", minutes=None)
    assert rec["curves"]["loss_ar"] == [[1, 3], [2.0, 1.0]]
    assert "bench.overall" not in rec["metrics"] and rec["minutes"] == 2.0


def test_sample_prompt_files_name_the_bad_line(tmp_path):
    from janusflow.sample.run import read_prompts
    j = tmp_path / "p.jsonl"
    j.write_text(json.dumps({"prompt": "a red circle"}) + "\n" + json.dumps({"prompt": 5}) + "\n")
    with pytest.raises(ValueError, match=rf"^{j}:2: field 'prompt': expected a non-empty string, got a number"):
        read_prompts((), str(j))
    j.write_text(json.dumps({"prompt": "a red circle"}) + "\n" + json.dumps(["a list"]) + "\n")
    with pytest.raises(ValueError, match=rf"^{j}:2: expected a JSON object, got a list"):
        read_prompts((), str(j))
    t = tmp_path / "p.txt"
    t.write_bytes(b"a red circle\n\nbad \xff byte\n")
    with pytest.raises(ValueError, match=rf"^{t}:3: not UTF-8"):
        read_prompts((), str(t))
    t.write_bytes(b"a red circle\r\n\nblue\n")
    assert read_prompts(("x",), str(t)) == ["x", "a red circle", "blue"]


def test_geneval_prompt_file_fields_are_typed(tmp_path):
    from janusflow.eval.geneval_layout import load_prompts
    good = {"tag": "counting", "prompt": "a photo of two cats", "include": [{"class": "cat", "count": 2}]}
    f = tmp_path / "m.jsonl"
    for bad, field in [({**good, "include": "cat"}, "include"),
                       ({**good, "include": [{"class": "cat", "count": "2"}]}, r"include\[0\]\.count"),
                       ({**good, "include": [{"class": "cat", "count": 1, "position": "left of"}]},
                        r"include\[0\]\.position"),
                       ({**good, "prompt": 3}, "prompt"),
                       ({**good, "exclude": [{"class": "dog", "count": True}]}, r"exclude\[0\]\.count")]:
        f.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
        with pytest.raises(ValueError, match=rf"^{f}:2: field '{field}'"):
            load_prompts(str(f))
    f.write_bytes(json.dumps(good).encode() + b"\n\xff\n")
    with pytest.raises(ValueError, match=rf"^{f}:2: not UTF-8"):
        load_prompts(str(f))
    pos = {**good, "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1, "position": ["left of", 0]}]}
    f.write_text(json.dumps(good) + "\n" + json.dumps(pos) + "\n")
    assert load_prompts(str(f))[0] == [good, pos]


@pytest.mark.parametrize("name", ["../outside.safetensors", "/abs/x.safetensors", "..", "sub/x.safetensors", 3])
def test_hf_shard_index_names_stay_in_the_checkpoint(tmp_path, name):
    from janusflow.checkpoint.hf import TensorSource
    from janusflow.checkpoint.torch_layout import CheckpointMismatch
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": name}}))
    # a non-string name is caught by the index's type check, naming the field
    with pytest.raises(CheckpointMismatch, match="must be plain file names|weight_map.w: expected a shard file name"):
        TensorSource(str(tmp_path))


@pytest.mark.parametrize("data,field", [
    ({"images": {"00000/samples/0000.png": [1, 2]}}, "images.00000/samples/0000.png"),
    ({"images": {"k": {"cat": [["1", 2, 3, 4, 0.9]]}}}, "images.k.cat"),
    ({"images": {"k": {"cat": [[1, 2, 3, 4, True]]}}}, "images.k.cat"),
    ({"images": {"k": {"cat": [[1, 2, 3, 4]]}}}, "images.k.cat"),
    ({"images": {"k": {"cat": [[1, 2, 3, 4, 0.9]]}}, "colors": {"k": {"cat": "red"}}}, "colors.k.cat"),
    ({"images": {"k": {}}, "colors": ["red"]}, "colors"),
])
def test_precomputed_detections_fields_are_typed(tmp_path, data, field):
    from janusflow.eval.geneval import PrecomputedDetections
    f = tmp_path / "det.json"
    f.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"^{f}: field '{field}': expected"):
        PrecomputedDetections(str(f))
