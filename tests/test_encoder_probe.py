"""Encoder probes (shapes/encoder_probe.py): ridge probes of a SigLIP tower's shape/colour knowledge."""

import numpy as np
import pytest
from flax import nnx

from janusflow.configs import presets
from janusflow.shapes import world as shapes
from janusflow.shapes import encoder_probe
from janusflow.models.siglip import SiglipVisionTower


def test_ridge_probe_reads_informative_features_and_not_noise():
    rng = np.random.default_rng(0)
    labels = rng.integers(6, size=600)
    informative = np.eye(6)[labels] + 0.3 * rng.standard_normal((600, 6))
    noise = rng.standard_normal((600, 12))
    assert encoder_probe.ridge_probe(informative, labels, 6) > 0.95
    assert encoder_probe.ridge_probe(noise, labels, 6) < 0.3     # chance 1/6 on 150 test rows


def test_ridge_probe_names_bad_input():
    with pytest.raises(ValueError, match="labels must lie"):
        encoder_probe.ridge_probe(np.zeros((20, 3)), np.full(20, 7), 6)
    with pytest.raises(ValueError, match=r"\(N, F\)"):
        encoder_probe.ridge_probe(np.zeros(20), np.zeros(20, int), 6)
    with pytest.raises(ValueError, match="no train or no test"):
        encoder_probe.ridge_probe(np.zeros((2, 3)), np.zeros(2, int), 6, train_frac=0.1)


def test_probe_scenes_hold_one_object_of_the_named_shape_and_colour():
    images, shape_ids, colour_ids = encoder_probe.probe_scenes(12, 32, seed=3)
    assert images.shape == (12, 32, 32, 3) and images.dtype == np.uint8
    assert list(shape_ids[:6]) == list(range(6))              # shapes cycle
    from janusflow.shapes.detector import ShapesDetector
    det = ShapesDetector()
    for img, c in zip(images, colour_ids):
        comps = det.components(img)
        assert len(comps) == 1 and comps[0]["color"] == shapes.COLORS[c]


def test_encoder_probe_reports_a_tiny_tower_beside_a_random_floor():
    cfg = presets.tiny().siglip
    res = encoder_probe.encoder_probe(SiglipVisionTower(cfg, rngs=nnx.Rngs(5)), cfg, n=240)
    for k in ("shape", "colour", "random_shape", "random_colour"):
        assert 0.0 <= res[k] <= 1.0
    # even a random tower passes the pixels' colour through its patch embedding: the floor is
    # far above chance, which is why the summary prints it beside the trained tower's number
    assert res["random_colour"] > 3 * res["chance_colour"]
    assert "random tower" in encoder_probe.summary(res)


def test_eval_encoder_cli_on_a_saved_tiny_model(tmp_path, capsys):
    import json

    from janusflow.checkpoint.model_io import save_model
    from janusflow.cli.main import main
    from janusflow.models.janusflow import JanusFlow
    cfg = presets.tiny()
    save_model(str(tmp_path / "m"), JanusFlow(cfg, rngs=nnx.Rngs(0)), cfg)
    assert main(["eval", "encoder", "--checkpoint", str(tmp_path / "m"), "--n", "96"]) == 0
    out = capsys.readouterr().out
    assert "random tower" in out
    res = json.loads(out[out.index("{"):])
    assert res["n"] == 96 and 0.0 <= res["shape"] <= 1.0
    # a missing checkpoint is a clear error, not a traceback
    assert main(["eval", "encoder", "--checkpoint", str(tmp_path / "absent")]) == 1
    assert "janusflow eval" in capsys.readouterr().err
