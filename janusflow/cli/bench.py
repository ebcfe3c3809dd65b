"""``janusflow bench data|train|sample``: the benchmarks."""

from __future__ import annotations

from janusflow.cli.common import add_config_args, load_config_args


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
    if args.compare:
        bench_train.run_compare(load_config_args(args), repeats=args.repeats)
    else:
        bench_train.run(load_config_args(args), repeats=args.repeats, latents=args.latents or None)
    return 0


def cmd_bench_sample(args) -> int:
    from janusflow.perf import bench_sample
    bench_sample.run(load_config_args(args).model, batch=args.batch, steps=args.steps, repeats=args.repeats,
                     prompt_len=args.prompt_len, solver=args.solver, decode=not args.no_decode,
                     uncached=not args.no_uncached)
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
    p.set_defaults(func=cmd_bench_sample)
