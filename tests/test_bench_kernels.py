"""``janusflow bench kernels``: both CPU decoding kernels timed beside XLA's path on small shapes,
with their outputs compared (the benchmark would otherwise time a kernel that computes the
wrong thing), and clear refusals."""

import json

import pytest

from janusflow.cli import main as cli
from janusflow.kernels import cpu_decode_attention, cpu_gemv, cpu_gemv_packed

SMALL = ["bench", "kernels", "--k", "128", "--n", "192", "--layers", "2", "--positions", "24", "--heads", "4",
         "--kv-heads", "2", "--head-dim", "16", "--repeats", "2"]


def test_times_both_paths_and_checks_the_outputs(capsys):
    if not (cpu_gemv.available() and cpu_decode_attention.available()):
        pytest.skip("the AVX-512 kernels did not build or cannot run here (see stderr)")
    assert cli.main(SMALL + ["--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    out = json.loads(lines[-1])
    assert set(out) == {"products_bfloat16", "products_float32", "attention_bfloat16", "attention_float32"}
    for name, r in out.items():
        kernels = {"kernel", "kernel_t"} if name.startswith("products") else {"kernel"}
        if name == "products_bfloat16" and cpu_gemv_packed.available():  # k = 128: packable
            kernels.add("packed")
        assert set(r["seconds"]) == {"xla"} | kernels and set(r["rel_l2_each"]) == kernels
        assert all(s > 0 for s in r["seconds"].values())
        for k, err in r["rel_l2_each"].items():
            assert err < (1e-2 if "bfloat16" in name else 1e-5), (name, k, err)
    text = "\n".join(lines[:-1])
    assert "products: 2 weights 128 x 192, x of 2 rows" in text and "24-position cache" in text


def test_refuses_more_rows_than_the_kernel_takes():
    with pytest.raises(SystemExit, match="at most 8 rows"):
        cli.main(SMALL + ["--rows", "9"])
