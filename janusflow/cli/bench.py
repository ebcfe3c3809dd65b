"""``janusflow bench data|train|sample|kernels``: the benchmarks."""

from __future__ import annotations

import argparse

from janusflow.cli.common import add_config_args, load_config_args


def int_list(text: str) -> tuple:
    try:
        out = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return out


def dtype_list(text: str) -> tuple:
    out = tuple(text.split(","))
    bad = [d for d in out if d not in ("float32", "bfloat16")]
    if bad:
        raise argparse.ArgumentTypeError(f"dtypes must be float32 or bfloat16, got {bad}")
    return out


def cmd_bench_data(args) -> int:
    import json

    from janusflow.perf.bench_data import run
    out = run(load_config_args(args), repeats=args.repeats, batches=args.batches, work_dir=args.work_dir,
              threads=args.threads)
    if args.json:
        print(json.dumps(out))
    return 0


def cmd_bench_train(args) -> int:
    from janusflow.perf import bench_train
    if args.compare_dtypes:
        bench_train.run_compare_dtypes(load_config_args(args), repeats=args.repeats)
        return 0
    if args.compare:
        bench_train.run_compare(load_config_args(args), repeats=args.repeats)
    else:
        bench_train.run(load_config_args(args), repeats=args.repeats, latents=args.latents or None)
    return 0


def cmd_bench_sample(args) -> int:
    cfg = load_config_args(args)
    if cfg.model.generates_image_tokens:   # Janus-Pro: the AR image-token sampler
        if args.compare_official:
            from janusflow.perf import bench_official_ar
            bench_official_ar.run(cfg.model, batches=args.batches, dtypes=args.dtypes, num_tokens=args.image_tokens,
                                  repeats=args.repeats, prompt_len=args.prompt_len, decode=not args.no_decode,
                                  official_src=args.official_src, matmul_impls=args.matmul_impls)
            return 0
        if args.image_tokens is not None:
            raise SystemExit("janusflow bench sample: --image-tokens needs --compare-official")
        from janusflow.perf import bench_ar
        bench_ar.run(cfg.model, batch=args.batch, repeats=args.repeats, prompt_len=args.prompt_len,
                     decode=not args.no_decode)
        return 0
    if args.compare_official:
        from janusflow.perf import bench_official
        bench_official.run(load_config_args(args).model, batches=args.batches, dtypes=args.dtypes,
                           steps=args.steps, repeats=args.repeats, prompt_len=args.prompt_len,
                           official_src=args.official_src, matmul_impls=args.matmul_impls)
        return 0
    from janusflow.perf import bench_sample
    bench_sample.run(load_config_args(args).model, batch=args.batch, steps=args.steps, repeats=args.repeats,
                     prompt_len=args.prompt_len, solver=args.solver, decode=not args.no_decode,
                     uncached=not args.no_uncached)
    return 0


def cmd_bench_kernels(args) -> int:
    import json

    from janusflow.perf import bench_kernels
    out = bench_kernels.run(k=args.k, n=args.n, layers=args.layers, rows=args.rows, positions=args.positions,
                            heads=args.heads, kv_heads=args.kv_heads or args.heads, head_dim=args.head_dim,
                            dtypes=args.dtypes, repeats=args.repeats)
    if args.json:
        print(json.dumps(out))
    return 0


def register(sub) -> None:
    bench = sub.add_parser("bench", help="benchmarks")
    bsub = bench.add_subparsers(dest="bench_command", required=True)
    p = bsub.add_parser("data", help="input pipeline examples/s beside the train step's")
    add_config_args(p)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batches", type=int, default=10, help="batches per timed run")
    p.add_argument("--threads", type=int, default=2, help="grain threads per task stream")
    p.add_argument("--work-dir", default=None, help="where to build the benchmark datasets (default: a temp dir)")
    p.add_argument("--json", action="store_true", help="also print the results as JSON")
    p.set_defaults(func=cmd_bench_data)
    p = bsub.add_parser("train", help="train-step time, examples/s, tokens/s and MFU (synthetic data)")
    add_config_args(p)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--latents", action="store_true",
                   help="feed precomputed latents (data.gen.latents=true): no VAE encoder in the step")
    p.add_argument("--compare", action="store_true",
                   help="time the step fed images and fed latents alternately in one process")
    p.add_argument("--compare-dtypes", action="store_true",
                   help="time the step computing in float32 and in bfloat16 alternately in one process")
    p.set_defaults(func=cmd_bench_train)
    p = bsub.add_parser("sample", help="s/ODE step, s/image, FLOPs, fraction of peak, prompt-cache speed-up")
    add_config_args(p)
    p.add_argument("--batch", type=int, default=1, help="images (2x LLM rows with CFG)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--solver", choices=("euler", "heun"), default="euler")
    p.add_argument("--no-decode", action="store_true", help="skip timing the VAE decode")
    p.add_argument("--no-uncached", action="store_true", help="skip the recompute-the-prompt baseline")
    p.add_argument("--compare-official", action="store_true",
                   help="time the official PyTorch sampling loop and ours alternately on the same weights")
    p.add_argument("--official-src", metavar="DIR", default=None,
                   help="with --compare-official: a deepseek-ai/Janus checkout (default: the installed janus)")
    p.add_argument("--batches", type=int_list, default=(1, 8), metavar="1,8",
                   help="with --compare-official: batch sizes")
    p.add_argument("--dtypes", type=dtype_list, default=("float32", "bfloat16"), metavar="float32,bfloat16",
                   help="with --compare-official: compute dtypes")
    p.add_argument("--matmul-impls", type=lambda s: tuple(s.split(",")), default=None, metavar="xla,gemv",
                   help="with --compare-official: time ours with each dense-layer matmul kernel "
                        "(ModelConfig.matmul_impl: xla, vendor, gemv; image-token models also gemv_unpacked: "
                        "gemv with bf16 weights not packed in 12 bits, gemv_unfused: gemv with each LLM "
                        "block's products and attention as separate calls)")
    p.add_argument("--image-tokens", type=int, default=None, metavar="N",
                   help="with --compare-official, image-token (Janus-Pro) models: sample N image tokens in both "
                        "loops (default: the full grid, 576 at 384 px)")
    p.set_defaults(func=cmd_bench_sample)
    p = bsub.add_parser("kernels", help="the CPU decoding kernels (few-row products, one-position attention) "
                                        "against XLA's path: ms and GB/s, side by side")
    p.add_argument("--k", type=int, default=2048, help="product input width (default: Janus-Pro-1B's hidden size)")
    p.add_argument("--n", type=int, default=5632, help="product output width (default: its MLP width)")
    p.add_argument("--layers", type=int, default=24, help="weights / caches per timed call, each its own")
    p.add_argument("--rows", type=int, default=2, help="rows of x (2: one image with its CFG row)")
    p.add_argument("--positions", type=int, default=608, help="attention cache length (608: a whole image)")
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=None, help="default: --heads")
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--dtypes", type=dtype_list, default=("bfloat16", "float32"), metavar="bfloat16,float32")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", action="store_true", help="also print the results as JSON")
    p.set_defaults(func=cmd_bench_kernels)
