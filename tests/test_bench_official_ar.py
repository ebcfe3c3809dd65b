"""``bench sample --compare-official`` for the image-token family (``perf/bench_official_ar.py``).

Without a deepseek-ai/Janus checkout the comparison path runs against stand-ins for the two
small official classes it reads (``vision_head``, ``MlpProjector``: Linear-GELU-Linear with the
official parameter names) and transformers' ``LlamaModel``, loaded strictly from our exporter's
keys; with a checkout in ``JANUSFLOW_OFFICIAL_SRC`` the real classes and the VQ decode run too.
"""

import dataclasses
import os
import types

import pytest

from janusflow.cli import main as cli
from janusflow.configs import presets

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")


def _tiny(**vq):
    base = presets.tiny_janus_pro()
    return presets.tiny_janus_pro(llm=dataclasses.replace(base.llm, num_layers=1), repa_layer=1,
                                  vq=dataclasses.replace(base.vq, **vq))


class _LinearGeluLinear(torch.nn.Module):
    def __init__(self, names, d_in, d_mid, d_out):
        super().__init__()
        self.names = names
        for name, (a, b) in zip(names, ((d_in, d_mid), (d_mid, d_out))):
            self.add_module(name, torch.nn.Linear(a, b))

    def forward(self, x):
        first, second = (getattr(self, n) for n in self.names)
        return second(torch.nn.functional.gelu(first(x)))


def _stand_ins():
    def vision_head(p):
        return _LinearGeluLinear(("output_mlp_projector", "vision_head"), p.n_embed, p.image_token_embed,
                                 p.image_token_size)

    def mlp_projector(p):
        assert p.projector_type == "mlp_gelu" and p.depth == 2
        m = torch.nn.Module()
        m.layers = torch.nn.Sequential(torch.nn.Linear(p.input_dim, p.n_embed), torch.nn.GELU(),
                                       torch.nn.Linear(p.n_embed, p.n_embed))
        m.forward = m.layers.forward
        return m
    return types.SimpleNamespace(vq_model=None, vision_head=vision_head, MlpProjector=mlp_projector)


def test_compare_official_ar_cli_without_the_reference_code_times_ours_only(tmp_path, capsys):
    assert cli.main(["bench", "sample", "--config", "tiny_janus_pro", "--set", "model.llm.num_layers=1",
                     "--set", "model.repa_layer=1",
                     "--compare-official", "--official-src", str(tmp_path), "--image-tokens", "3",
                     "--batches", "1", "--dtypes", "float32", "--repeats", "1", "--prompt-len", "4"]) == 0
    out = capsys.readouterr().out
    assert "official loop unavailable" in out and "janus/models/vq_model.py" in out
    assert "3 of 64 image tokens" in out and "ours " in out and "s/image" in out


def test_compare_official_ar_reports_a_ratio_on_the_same_step0_logits(monkeypatch):
    from janusflow.perf import bench_official_ar
    monkeypatch.setattr(bench_official_ar, "load_official_ar", lambda src: (_stand_ins(), None))
    lines = []
    out = bench_official_ar.run(_tiny(), batches=(2,), dtypes=("float32", "bfloat16"), num_tokens=4, repeats=1,
                                prompt_len=5, pad_id=3, log=lines.append)
    assert out["official"] and not out["decode"] and out["num_tokens"] == 4
    rows = {r["dtype"]: r for r in out["rows"]}
    for r in rows.values():
        assert r["speedup"] > 0 and r["speedup_tokens"] > 0
        assert r["official_s_per_image"] == pytest.approx(r["official_tokens_s"] / 2)
    assert rows["float32"]["step0_logits_rel_diff"] < 1e-5 and rows["float32"]["step0_argmax_agree"] == 1.0
    assert rows["bfloat16"]["step0_logits_rel_diff"] < 5e-2       # both in bf16, rounded differently
    assert sum("faster per image" in line for line in lines) == 2
    # a scanned preset (janus_pro_1b is one) is timed per layer, as iter_generate_ar samples it
    scanned = dataclasses.replace(_tiny(), scan_layers=True)
    row = bench_official_ar.run(scanned, batches=(1,), dtypes=("float32",), num_tokens=2, repeats=1,
                                prompt_len=4, log=lambda m: None)["rows"][0]
    assert row["step0_logits_rel_diff"] < 1e-5 and row["speedup"] > 0


def test_compare_official_ar_rejects_bad_token_counts():
    from janusflow.perf import bench_official_ar
    for n in (0, 65):
        with pytest.raises(ValueError, match="image tokens"):
            bench_official_ar.run(_tiny(), num_tokens=n, official_src="/nonexistent")


def test_compare_official_ar_with_the_reference_code():
    """With a deepseek-ai/Janus checkout in JANUSFLOW_OFFICIAL_SRC (or an installed janus): the
    official classes, the full token grid and the VQ decode (GroupNorm(32) as the official VQ)."""
    from janusflow.perf import bench_official_ar
    src = os.environ.get("JANUSFLOW_OFFICIAL_SRC")
    if bench_official_ar.load_official_ar(src)[0] is None:
        pytest.skip("reference code (deepseek-ai/Janus) not available")
    out = bench_official_ar.run(_tiny(norm_groups=32), batches=(1,), dtypes=("float32",), repeats=1,
                                prompt_len=5, official_src=src)
    (row,) = out["rows"]
    assert out["decode"] and row["official_decode_s"] > 0 and row["ours_decode_s"] > 0
    assert row["step0_logits_rel_diff"] < 1e-5 and row["speedup"] > 0


def test_compare_official_ar_times_each_matmul_kernel(monkeypatch, capsys):
    """``--matmul-impls xla,vendor,gemv`` reaches the image-token comparison (it was accepted and
    ignored): ours once per kernel, alternating with the official loop, each with its ratio,
    the kernels' step-0 logits compared. Without MKL the vendor kernel is XLA's dot (one line
    on stderr), without g++/AVX-512 the gemv one, so the path runs either way. Without the
    option ours runs on the kernels the sampler picks (on CPU: gemv)."""
    from janusflow.perf import bench_official_ar
    monkeypatch.setattr(bench_official_ar, "load_official_ar", lambda src: (_stand_ins(), None))
    assert cli.main(["bench", "sample", "--config", "tiny_janus_pro", "--set", "model.llm.num_layers=1",
                     "--set", "model.repa_layer=1", "--compare-official", "--image-tokens", "3",
                     "--batches", "1", "--dtypes", "float32", "--repeats", "1", "--prompt-len", "4",
                     "--matmul-impls", "xla,vendor,gemv"]) == 0
    out = capsys.readouterr().out
    assert "matmul xla, vendor, gemv" in out
    line = next(x for x in out.splitlines() if "faster per image" in x)
    assert "ours_xla " in line and "ours_vendor " in line and "ours vendor step0 rel diff vs ours xla" in line
    assert "ours_gemv " in line and "ours gemv step0 rel diff vs ours xla" in line
    row = bench_official_ar.run(_tiny(), batches=(1,), dtypes=("float32",), num_tokens=3, repeats=1, prompt_len=4,
                                matmul_impls=("xla", "vendor", "gemv"), log=lambda m: None)["rows"][0]
    assert row["speedup_ours_xla"] > 0 and row["speedup_ours_vendor"] > 0 and row["speedup_ours_gemv"] > 0
    assert row["ours_vendor_step0_rel_diff_vs_ours_xla"] < 1e-5
    assert row["ours_gemv_step0_rel_diff_vs_ours_xla"] < 1e-5
    assert len(row["ours_xla_samples"]) == len(row["ours_vendor_samples"]) == len(row["ours_gemv_samples"]) == 1
    default = []
    bench_official_ar.run(_tiny(), batches=(1,), dtypes=("float32",), num_tokens=3, repeats=1, prompt_len=4,
                          log=default.append)
    from janusflow.kernels import cpu_gemv
    assert f"matmul {'gemv' if cpu_gemv.available() else 'xla'} " in default[0]
    with pytest.raises(Exception, match="matmul_impl"):
        bench_official_ar.run(_tiny(), num_tokens=3, matmul_impls=("cublas",), log=lambda m: None)


def test_compare_official_ar_times_packed_beside_unpacked_weights(monkeypatch):
    """``gemv_unpacked``: the gemv run with bf16 weights left unpacked (``decoding_layout(pack=
    False)``), timed in the same run as the packed one; packing is lossless, so both start from
    the same logits up to the kernels' summation order."""
    from janusflow.kernels import cpu_gemv_packed
    from janusflow.perf import bench_official_ar
    monkeypatch.setattr(bench_official_ar, "load_official_ar", lambda src: (_stand_ins(), None))
    log = []
    row = bench_official_ar.run(_tiny(), batches=(1,), dtypes=("bfloat16",), num_tokens=3, repeats=1, prompt_len=4,
                                matmul_impls=("gemv", "gemv_unpacked"), log=log.append)["rows"][0]
    assert "matmul gemv, gemv_unpacked " in log[0]
    assert row["speedup_ours_gemv"] > 0 and row["speedup_ours_gemv_unpacked"] > 0
    if cpu_gemv_packed.available():
        assert row["ours_gemv_unpacked_step0_rel_diff_vs_ours_gemv"] < 1e-2


def test_official_vq_sizes_come_from_our_config():
    """The full-image comparison of a released-size model failed with KeyError 'z_channels': the
    official VQ was built from config.json, which omits VQ-16's own sizes. They come from our
    config now, for VQ-16 and for a reduced VQ."""
    from janusflow.checkpoint.hf_config import hf_config_from_model_config
    from janusflow.perf.bench_official_ar import official_vq_args
    released = presets.janus_pro_1b()
    assert "z_channels" not in hf_config_from_model_config(released)["gen_vision_config"]["params"]
    args, kw = official_vq_args(released.vq)
    assert kw is None and args == dict(codebook_size=16384, codebook_embed_dim=8, z_channels=256,
                                       encoder_ch_mult=[1, 1, 2, 2, 4], decoder_ch_mult=[1, 1, 2, 2, 4])
    tiny = presets.tiny_janus_pro().vq
    args, kw = official_vq_args(tiny)
    assert args["z_channels"] == tiny.z_channels == kw["z_channels"] and kw["ch"] == tiny.base_channels
