"""The ``janusflow`` command. Each subcommand parses its flags here and calls one function in
the package, so everything the CLI does is also a Python API."""

from __future__ import annotations

import argparse
import os
import sys

from janusflow.configs.schema import ConfigError


def _add_config_args(p: argparse.ArgumentParser):
    p.add_argument("--config", required=True,
                   help="experiments/<file>.py[:arg] or a model preset (tiny, janusflow_1_3b)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set model.llm.num_layers=2 (repeatable)")


def _load(args):
    from janusflow.configs.loader import apply_overrides, load_config
    return apply_overrides(load_config(args.config), args.set)


def cmd_train(args) -> int:
    cfg = _load(args)
    if args.vae:  # the pretrained VAE, as --set train.vae_from=DIR
        from janusflow.configs.schema import replace
        cfg = replace(cfg, train=replace(cfg.train, vae_from=args.vae))
    if getattr(args, "platform", None):  # mesh, remat, dtype, accumulation, runtime flags
        from janusflow.perf.platforms import apply_platform, export_env, load_platform
        platform = load_platform(args.platform)
        cfg = apply_platform(cfg, platform, log=print)
        export_env(platform, log=print)  # before jax starts its backend (train() is the first to use it)
    from janusflow.train.loop import init_distributed
    # before any other jax call; a multi-process launch names the coordinator and this process
    # here or in the environment (parallel/mesh.py)
    init_distributed(coordinator=args.coordinator, num_processes=args.num_processes, process_id=args.process_id)
    if cfg.recipe.enabled:  # the multi-phase default run (train/recipe.py)
        from janusflow.train.recipe import run
        run(cfg, args.workdir, start_over=args.start_over)
    else:
        from janusflow.train.loop import train
        train(cfg, args.workdir, start_over=args.start_over)
    return 0


def cmd_plan(args) -> int:
    from janusflow.perf.plan import run_cli
    return run_cli(args)


def cmd_sweep(args) -> int:
    from janusflow.train import sweep
    path, members = sweep.load_members(args.config)
    members = sweep.select(members, args.only)
    if args.print:
        for line in sweep.launch_commands(path, members, args.workdir, args.set, args.launcher):
            print(line)
        return 0
    from janusflow.configs.loader import apply_overrides, load_config
    for m in members:  # every member's config must load before hours of training start
        apply_overrides(load_config(f"{path}:{m['arg']}"), args.set)
    status = sweep.run(path, members, args.workdir, args.set)
    out = sweep.write_results(path, members, args.workdir, status, command=" ".join(["janusflow"] + sys.argv[1:]))
    print(open(out).read())
    print(f"wrote {out} and learning_curves.png")
    return 0 if all(s == "done" for s in status.values()) else 1


def cmd_bench_train(args) -> int:
    from janusflow.perf import bench_train
    if args.compare:
        bench_train.run_compare(_load(args), repeats=args.repeats)
    else:
        bench_train.run(_load(args), repeats=args.repeats, latents=args.latents or None)
    return 0


def cmd_info(args) -> int:
    from janusflow.perf.info import report
    cfg = _load(args)
    print(f"experiment: {cfg.name}")
    print(report(cfg.model, seq_len=cfg.seq_len))
    return 0


def _dir_tokenizer(directory: str):
    """The tokenizer a checkpoint directory holds (carried over by ``convert``), or None."""
    import os

    from janusflow.data.tokenizer import Tokenizer
    return Tokenizer.load(directory) if os.path.isfile(os.path.join(directory, "tokenizer.json")) else None


def cmd_convert(args) -> int:
    import os
    import time

    from janusflow.checkpoint import hf, model_io
    from janusflow.checkpoint.torch_layout import CheckpointMismatch
    start, last = time.time(), [0.0]

    def say(msg):
        print(msg, file=sys.stderr, flush=True)

    def progress(done, total, nbytes, total_bytes):
        now = time.time()
        if done == total or now - last[0] >= 2.0:
            last[0] = now
            say(f"  {done}/{total} tensors, {nbytes / 1e9:.2f}/{total_bytes / 1e9:.2f} GB, "
                f"{now - start:.0f}s")

    try:
        # Refuse before the long read, not after it.
        if args.from_hf and os.path.exists(args.out):
            raise FileExistsError(f"--out {args.out} already exists; refusing to overwrite a checkpoint")
        if args.to_hf and os.path.isdir(args.out) and os.listdir(args.out):
            raise FileExistsError(f"--out {args.out} is not empty; choose a new directory")
        if args.from_hf:
            if not os.path.isdir(args.from_hf):
                raise FileNotFoundError(f"--from-hf {args.from_hf}: no such directory")
            tok = _dir_tokenizer(args.from_hf)     # a bad tokenizer.json fails before the long read
            say(f"reading {args.from_hf} ({args.dtype or 'float32'})")
            model, cfg = hf.load_janusflow_hf(args.from_hf, args.dtype or "float32",
                                              progress=progress, log=say)
            say(f"writing {args.out}")
            path = model_io.save_model(args.out, model, cfg, tok)
        else:
            src = model_io.resolve_checkpoint(args.to_hf, say)
            tok = _dir_tokenizer(src)
            say(f"reading {src}")
            model, cfg = model_io.load_model(src, args.dtype, progress=progress, log=say)
            say(f"writing {args.out}")
            hf.export_janusflow_hf(model, cfg, args.out, progress=progress)
            for name, body in (tok.files().items() if tok is not None else ()):
                with open(os.path.join(args.out, name), "w", encoding="utf-8") as f:
                    f.write(body)
            path = args.out
    except ConfigError:
        raise
    except (CheckpointMismatch, FileNotFoundError, FileExistsError, ImportError, ValueError) as e:
        say(f"janusflow convert: error: {e}")
        return 1
    say(f"done in {time.time() - start:.0f}s: {path}")
    return 0


def cmd_sample(args) -> int:
    from janusflow.checkpoint import model_io
    from janusflow.checkpoint.torch_layout import CheckpointMismatch
    from janusflow.sample import run
    from janusflow.sample.generate import with_compute_dtype
    try:
        texts = run.read_prompts(args.prompt, args.prompts_file)
        if texts and args.prompt_ids:
            raise ValueError("give text prompts (--prompt/--prompts-file) or --prompt-ids, not both")
        if not texts and not args.prompt_ids:
            raise ValueError("no prompt: give --prompt, --prompts-file or --prompt-ids")
        args.checkpoint = model_io.resolve_checkpoint(args.checkpoint, lambda m: print(m, file=sys.stderr))
        tok = run.load_tokenizer(args.checkpoint, args.tokenizer) if texts else None
        model, cfg = model_io.load_model(args.checkpoint, args.dtype)
        if args.compute_dtype:
            model, cfg = with_compute_dtype(model, cfg, args.compute_dtype)
        vae = run.load_vae_for(cfg, args.checkpoint, args.vae, args.dtype)
        if tok is not None:
            from janusflow.data.tokenizer import generation_prompt_ids
            ids = [generation_prompt_ids(tok, t) for t in texts]
        else:
            ids = [run.parse_ids(x) for x in args.prompt_ids]
        out = run.sample_to_dir(
            model, vae, cfg, ids, args.out, prompts_text=texts or None, n=args.n,
            cfg_weight=args.cfg, steps=args.steps, seed=args.seed, solver=args.solver,
            save_latents=args.save_latents, batch_size=args.batch_size, mesh=run.default_mesh(),
            pad_id=tok.pad_id if tok is not None else 0, grid_max=args.grid_max,
            progress=not args.no_progress, log=lambda m: print(m, file=sys.stderr),
            model_id=run.model_identity(args.checkpoint, dtype=args.dtype, compute_dtype=args.compute_dtype))
    except (CheckpointMismatch, FileNotFoundError, ValueError) as e:
        print(f"janusflow sample: error: {e}", file=sys.stderr)
        return 1
    print(f"{out['generated']} images written, {out['skipped']} already there: {out['out_dir']}"
          + (f" (grid: {out['grid']})" if out["grid"] else ""))
    return 0


def cmd_chat(args) -> int:
    from janusflow.checkpoint import model_io
    from janusflow.checkpoint.torch_layout import CheckpointMismatch
    from janusflow.sample import run
    from janusflow.sample.chat import answer, load_image
    try:
        if not args.question.strip():
            raise ValueError("--question is empty")
        image = load_image(args.image)
        args.checkpoint = model_io.resolve_checkpoint(args.checkpoint, lambda m: print(m, file=sys.stderr))
        tok = run.load_tokenizer(args.checkpoint, args.tokenizer)
        model, cfg = model_io.load_model(args.checkpoint, args.dtype)
        vae = (run.load_vae_for(cfg, args.checkpoint, args.vae, args.dtype)
               if cfg.und_encoder in ("shared_gen", "separate_gen") else None)
        text = answer(model, cfg, tok, [image], [args.question], max_new_tokens=args.max_new_tokens,
                      temperature=args.temperature, top_p=args.top_p, seed=args.seed, vae=vae)[0]
    except (CheckpointMismatch, FileNotFoundError, ValueError) as e:
        print(f"janusflow chat: error: {e}", file=sys.stderr)
        return 1
    print(text)
    return 0


def cmd_bench_sample(args) -> int:
    from janusflow.perf import bench_sample
    bench_sample.run(_load(args).model, batch=args.batch, steps=args.steps, repeats=args.repeats,
                     prompt_len=args.prompt_len, solver=args.solver, decode=not args.no_decode,
                     uncached=not args.no_uncached)
    return 0


def cmd_data(args) -> int:
    from janusflow.data import build
    from janusflow.shapes import dataset as shapes_tfds
    from janusflow.data.preprocess import MAX_PIXELS
    try:
        if args.data_command == "shapes":
            if args.train is None and args.validation is not None:
                raise ValueError("--validation needs --train (a custom size of both splits)")
            if args.train is not None and not (args.config.endswith("px") and args.config[:-2].isdigit()):
                raise ValueError(f"--config {args.config!r}: with --train, give the image size as <N>px")
            cfg = args.config if args.train is None else shapes_tfds.shapes_config(
                int(args.config[:-2]), args.train, 1200 if args.validation is None else args.validation)
            print(shapes_tfds.build_shapes(args.out, cfg))
        elif args.texts and not (args.images or args.captions):
            build.build_text(args.texts, args.out, args.name)
        elif args.images and args.captions and not args.texts:
            build.build_image_text(args.images, args.captions, args.out, args.name,
                                   val_fraction=args.val_fraction, short_side=args.short_side,
                                   threads=args.threads,
                                   max_pixels=MAX_PIXELS if args.max_pixels is None else args.max_pixels)
        else:
            print("janusflow data build: error: give --images and --captions, or --texts (not both)",
                  file=sys.stderr)
            return 2
    except (OSError, ValueError) as e:                  # OSError: FileNotFound, FileExists, ...
        print(f"janusflow data: error: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_data_lengths(args) -> int:
    import json

    from janusflow.data import lengths
    cfg = _load(args)
    try:
        rep = lengths.report(cfg, lengths.measure(cfg, n=args.n, split=args.split))
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"janusflow data lengths: error: {e}", file=sys.stderr)
        return 1
    print(lengths.format_report(rep))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rep, f, indent=2)
        print(f"wrote {args.json}")
    return 0


def cmd_data_latents(args) -> int:
    from janusflow.data.latents import build_latents
    try:
        build_latents(_load(args), args.out, split=args.split, batch=args.batch, name=args.name,
                      vae_dir=args.vae)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"janusflow data latents: error: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_bench_data(args) -> int:
    import json

    from janusflow.perf.bench_data import run
    out = run(_load(args), repeats=args.repeats, batches=args.batches, work_dir=args.work_dir,
              threads=args.threads)
    if args.json:
        print(json.dumps(out))
    return 0


def cmd_eval(args) -> int:
    import json

    from janusflow.eval import geneval
    from janusflow.eval.geneval_layout import ProtocolMismatch
    from janusflow.eval.geneval_score import IncompleteResultsError, format_summary, summarize
    try:
        if getattr(args, "checkpoint", None):
            from janusflow.checkpoint.model_io import resolve_checkpoint
            args.checkpoint = resolve_checkpoint(args.checkpoint, lambda m: print(m, file=sys.stderr))
        if args.eval_command == "conditioning":
            from janusflow.shapes import conditioning
            ts = tuple(float(x) for x in (args.t or ",".join(map(str, conditioning.SHAPE_GAP_TS if args.shape_swap
                                                                 else conditioning.DEFAULT_TS))).split(","))
            out = conditioning.evaluate_checkpoint(args.checkpoint, _load(args), n=args.n, ts=ts, seed=args.seed,
                                                   shape_swap=args.shape_swap)
            print(conditioning.summary(out))
        elif args.eval_command == "denoise":
            from janusflow.shapes import denoise
            ts = tuple(float(x) for x in args.t.split(","))
            if os.path.exists(args.out) and not args.force:
                print(f"error: --out {args.out} exists; pass --force to replace it", file=sys.stderr)
                return 2
            out = denoise.evaluate_checkpoint(args.checkpoint, _load(args), n=args.n, ts=ts, seed=args.seed,
                                              out_png=args.out)
            print(denoise.summary(out))
            print(f"wrote {args.out} (rows: clean, then t = {args.t}; each cell z_t | x_hat)")
        elif args.eval_command == "trajectory":
            from janusflow.shapes import denoise
            if os.path.exists(args.out) and not args.force:
                print(f"error: --out {args.out} exists; pass --force to replace it", file=sys.stderr)
                return 2
            show = tuple(int(x) for x in args.show.split(","))
            ts = denoise.trajectory_checkpoint(args.checkpoint, tuple(args.prompt or denoise.SHAPES_PROMPTS),
                                               steps=args.steps, cfg_weight=args.cfg, seed=args.seed, show=show,
                                               out_png=args.out)
            print(f"wrote {args.out} (rows: final samples, then t = {', '.join(f'{t:.3g}' for t in ts)}; "
                  "each cell z | x_hat)")
            out = {"t": ts, "out": args.out}
        elif args.eval_command == "encoder":
            from janusflow.checkpoint.model_io import load_model
            from janusflow.shapes import encoder_probe
            model, mcfg = load_model(args.checkpoint)
            if not mcfg.uses_siglip:
                print(f"janusflow eval encoder: error: {args.checkpoint} has no SigLIP encoder "
                      f"(und_encoder={mcfg.und_encoder!r}, repa={mcfg.repa})", file=sys.stderr)
                return 1
            out = encoder_probe.encoder_probe(model.und_encoder, mcfg.siglip, n=args.n, seed=args.seed)
            print(encoder_probe.summary(out))
        elif args.eval_command == "shapes":
            from janusflow.shapes import bench as shapes_bench
            if args.ground_truth:
                fn = shapes_bench.ground_truth_generate_fn(args.size)
            elif args.checkpoint:
                model, vae, cfg, tok = geneval.load_generator(args.checkpoint, args.vae, args.dtype)
                fn = geneval.model_generate_fn(model, vae, cfg, tok, cfg_weight=args.cfg,
                                               steps=args.steps, solver=args.solver)
            else:
                print("janusflow eval shapes: error: give --checkpoint or --ground-truth", file=sys.stderr)
                return 2
            out = shapes_bench.run_shapes_bench(fn, args.n_per_tag, args.n_images, args.seed,
                                                args.outdir, batch_size=args.batch_size, progress=True)
        elif args.geneval_command == "generate":
            out = geneval.run_generate(args.checkpoint, args.metadata, args.outdir, n=args.n,
                                       cfg_weight=args.cfg, steps=args.steps, seed=args.seed,
                                       batch_size=args.batch_size, solver=args.solver,
                                       vae_path=args.vae, dtype=args.dtype)
        elif args.geneval_command == "summarize":
            from janusflow.eval.geneval_layout import load_prompts
            expected = load_prompts(args.metadata)[0]      # default: the shipped official list
            out = summarize(args.results, expected, args.n, strict=not args.allow_incomplete)
        else:
            out = geneval.run_score(args.outdir, detections=args.detections, detector=args.detector,
                                    colors=args.colors, out_jsonl=args.out, metadata=args.metadata,
                                    n=args.n, strict=not args.allow_incomplete,
                                    mask2former=args.mask2former, object_names=args.object_names,
                                    device=args.device)
    except (IncompleteResultsError, ProtocolMismatch, FileNotFoundError, ImportError, KeyError,
            ValueError) as e:
        print(f"janusflow eval: error: {e}", file=sys.stderr)
        return 1
    if "per_tag" in out and args.eval_command == "geneval":
        print(format_summary(out))
    print(json.dumps(out, indent=None if args.eval_command == "geneval" else 2, default=str))
    return 0


def _bench_group(sub):
    """The shared `janusflow bench` group (data, sample, train benchmarks attach to it)."""
    bench = sub.choices.get("bench") or sub.add_parser("bench", help="benchmarks")
    return next((a for a in bench._actions if isinstance(a, argparse._SubParsersAction)), None) \
        or bench.add_subparsers(dest="bench_command", required=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="janusflow", description=__doc__)
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error instead of its one-line message")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="parameter count per component and FLOPs per training token")
    _add_config_args(p)
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("convert", help="official JanusFlow HF checkpoint <-> janusflow checkpoint")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-hf", metavar="DIR",
                     help="HF directory (config.json + model*.safetensors or pytorch_model*.bin)")
    src.add_argument("--to-hf", metavar="CKPT_DIR", help="janusflow checkpoint directory to export")
    p.add_argument("--out", required=True, help="new output directory")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                   help="parameter dtype (default: float32 from HF, the saved dtype to HF)")
    p.set_defaults(func=cmd_convert)
    p = sub.add_parser("data", help="build TFDS datasets: users' images+captions, texts, shapes")
    dsub = p.add_subparsers(dest="data_command", required=True)
    q = dsub.add_parser("build", help="a folder of images + captions JSONL (or a text file) -> TFDS dataset")
    q.add_argument("--images", metavar="DIR", help="folder the captions' image paths are relative to")
    q.add_argument("--captions", metavar="FILE.jsonl",
                   help='lines {"image": path, "caption": str|[str], "qa": [{"question", "answer"}]}')
    q.add_argument("--texts", metavar="FILE", help="text dataset: .txt (a document per line) or .jsonl with 'text'")
    q.add_argument("--out", required=True, metavar="DATA_DIR", help="TFDS data directory to write into")
    q.add_argument("--name", default="user_images", help="dataset name (snake_case) the configs use")
    q.add_argument("--val-fraction", type=float, default=0.0, help="held-out share (by image path hash)")
    q.add_argument("--short-side", type=int, default=0, help="downscale images whose short side exceeds this")
    q.add_argument("--threads", type=int, default=4, help="image decoding threads")
    q.add_argument("--max-pixels", type=int, default=None,
                   help="skip images with more pixels than this, read from the header before decoding "
                   "(default 2^26, 67 MPixel)")
    q.set_defaults(func=cmd_data)
    q = dsub.add_parser("shapes", help="generate the built-in janusflow_shapes dataset")
    q.add_argument("--out", required=True, metavar="DATA_DIR")
    q.add_argument("--config", default="32px", help="32px | 64px | 384px")
    q.add_argument("--train", type=int, default=None, help="custom number of train examples")
    q.add_argument("--validation", type=int, default=None, help="custom number of validation examples")
    q.set_defaults(func=cmd_data)
    q = dsub.add_parser("lengths", help="token lengths of the experiment's und/gen/text sources and how "
                        "many examples each length cut keeps whole, cuts or drops (data/lengths.py)")
    _add_config_args(q)
    q.add_argument("--n", type=int, default=1000, help="examples per source (the first N)")
    q.add_argument("--split", default=None, help="split to read (default: each source's)")
    q.add_argument("--json", default=None, metavar="OUT.json")
    q.set_defaults(func=cmd_data_lengths)
    q = dsub.add_parser("latents", help="encode the experiment's gen source with the frozen VAE once "
                        "(train with --set data.gen.name=DIR --set data.gen.latents=true)")
    _add_config_args(q)
    q.add_argument("--out", required=True, metavar="DATA_DIR", help="TFDS data directory to write into")
    q.add_argument("--split", default="train", help="split(s) of data.gen to encode, comma-separated")
    q.add_argument("--batch", type=int, default=8, help="images per encoder call")
    q.add_argument("--name", default=None, help="dataset name (default <source>_latents)")
    q.add_argument("--vae", metavar="DIR", default=None,
                   help="diffusers AutoencoderKL dir (default: the VAE a fresh run of EXP initialises)")
    q.set_defaults(func=cmd_data_latents)
    bsub = _bench_group(sub)
    p = bsub.add_parser("data", help="input pipeline examples/s beside the train step's")
    _add_config_args(p)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batches", type=int, default=10, help="batches per timed run")
    p.add_argument("--threads", type=int, default=2, help="grain threads per task stream")
    p.add_argument("--work-dir", default=None, help="where to build the benchmark datasets (default: a temp dir)")
    p.add_argument("--json", action="store_true", help="also print the results as JSON")
    p.set_defaults(func=cmd_bench_data)
    p = sub.add_parser("eval", help="GenEval (generate / score / summarize) and the shapes benchmark")
    esub = p.add_subparsers(dest="eval_command", required=True)
    g = esub.add_parser("geneval", help="the GenEval benchmark (official prompt file and layout)")
    gsub = g.add_subparsers(dest="geneval_command", required=True)

    def sampling_args(q):
        q.add_argument("--cfg", type=float, default=2.0, help="CFG weight w (paper FID protocol: 2)")
        q.add_argument("--steps", type=int, default=30, help="ODE steps (paper: 30 Euler)")
        q.add_argument("--solver", choices=("euler", "heun"), default="euler")
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--vae", metavar="DIR", default=None,
                       help="diffusers AutoencoderKL dir (default CKPT/vae; not needed for a pixel VAE)")
        q.add_argument("--dtype", choices=("float32", "bfloat16"), default=None)
    q = gsub.add_parser("generate", help="write <outdir>/<00000>/{metadata.jsonl,samples/0000.png}; resumable")
    q.add_argument("--checkpoint", required=True)
    q.add_argument("--metadata", default=None, metavar="evaluation_metadata.jsonl",
                   help="prompt file (default: the official GenEval list shipped with janusflow)")
    q.add_argument("--outdir", required=True)
    q.add_argument("--n", type=int, default=4, help="images per prompt")
    q.add_argument("--batch-size", type=int, default=8)
    sampling_args(q)
    q.set_defaults(func=cmd_eval)
    q = gsub.add_parser("summarize", help="per-tag and overall score of a results.jsonl (official schema)")
    q.add_argument("results", metavar="RESULTS.jsonl")
    q.add_argument("--metadata", default=None, help="prompt file to check completeness against "
                   "(default: the official GenEval list shipped with janusflow)")
    q.add_argument("--n", type=int, default=None, help="images per prompt expected (default: the most seen)")
    q.add_argument("--allow-incomplete", action="store_true", help="report per-tag scores, no overall")
    q.set_defaults(func=cmd_eval)
    q = gsub.add_parser("score", help="detect + score a generated layout, write results.jsonl, summarize")
    q.add_argument("--outdir", required=True, help="the generated layout")
    q.add_argument("--detections", default=None, help="precomputed detections (.json / .npz)")
    q.add_argument("--detector", choices=("precomputed", "shapes", "mask2former"), default="precomputed")
    q.add_argument("--colors", choices=("precomputed", "shapes", "clip"), default="precomputed",
                   help="colour classifier (clip: open_clip ViT-L/14 OpenAI weights)")
    q.add_argument("--out", default=None, help="results jsonl (default OUTDIR/results.jsonl)")
    q.add_argument("--metadata", default=None, help="prompt file to check completeness against "
                   "(default: the layout's own prompts, else the shipped official list)")
    q.add_argument("--n", type=int, default=None, help="images per prompt (default: protocol.json's)")
    q.add_argument("--mask2former", default=None, metavar="CKPT", help="Mask2Former .pth (mmdet 2.x)")
    q.add_argument("--object-names", default=None, metavar="object_names.txt")
    q.add_argument("--device", default="cuda")
    q.add_argument("--allow-incomplete", action="store_true")
    q.set_defaults(func=cmd_eval)
    q = esub.add_parser("conditioning", help="does the generator read its prompt? RF loss with shuffled "
                        "minus correct prompts on validation examples (shapes/conditioning.py)")
    q.add_argument("--checkpoint", required=True, help="a saved model directory (e.g. WORKDIR/stage3/model_ema)")
    _add_config_args(q)
    q.add_argument("--n", type=int, default=64, help="validation examples")
    q.add_argument("--t", default=None, help="comma-separated t values (0 = noise; default 0.1,0.3,0.5,0.7, "
                   "with --shape-swap 0.05,0.1,0.2,0.3)")
    q.add_argument("--shape-swap", action="store_true", help="the shape gap: one-object shapes scenes with their "
                   "prompt vs the same prompt naming another shape (same colour)")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_eval)
    q = esub.add_parser("denoise", help="one-step denoising grid: x_hat = z_t + (1-t) v for validation images "
                        "noised to several t (shapes/denoise.py)")
    q.add_argument("--checkpoint", required=True, help="a saved model directory (e.g. WORKDIR/stage3/model_ema)")
    _add_config_args(q)
    q.add_argument("--out", required=True, help="PNG to write")
    q.add_argument("--force", action="store_true", help="replace an existing --out file")
    q.add_argument("--n", type=int, default=8, help="validation examples (grid columns)")
    q.add_argument("--t", default="0.1,0.2,0.3,0.5,0.7,0.9", help="comma-separated t values (0 = noise)")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_eval)
    q = esub.add_parser("trajectory", help="the sampler's Euler + CFG path from noise: z and x_hat = z + (1-t) v "
                        "at chosen steps, one column per prompt (shapes/denoise.py)")
    q.add_argument("--checkpoint", required=True, help="a saved model directory (e.g. WORKDIR/stage3/model_ema)")
    q.add_argument("--out", required=True, help="PNG to write")
    q.add_argument("--force", action="store_true", help="replace an existing --out file")
    q.add_argument("--prompt", action="append", help="a prompt (repeatable; default: shapes-world prompts)")
    q.add_argument("--steps", type=int, default=30)
    q.add_argument("--cfg", type=float, default=2.0)
    q.add_argument("--show", default="0,1,3,6,9,15,24", help="comma-separated step indices to show")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_eval)
    q = esub.add_parser("encoder", help="what the SigLIP encoder (REPA's target) knows: ridge probes of shape "
                        "and colour on one-object scenes, beside a random tower's (shapes/encoder_probe.py)")
    q.add_argument("--checkpoint", required=True, help="a saved model directory (e.g. WORKDIR/stage3/model_ema)")
    q.add_argument("--n", type=int, default=1200, help="one-object scenes (3/4 fit the probe, 1/4 score it)")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_eval)
    q = esub.add_parser("shapes", help="GenEval-style benchmark on the shapes world (analytic detector)")
    q.add_argument("--checkpoint", default=None)
    q.add_argument("--ground-truth", action="store_true", help="score ground-truth renders (sanity check)")
    q.add_argument("--size", type=int, default=32, help="render size for --ground-truth")
    q.add_argument("--n-per-tag", type=int, default=16)
    q.add_argument("--n-images", type=int, default=2)
    q.add_argument("--batch-size", type=int, default=16)
    q.add_argument("--outdir", default=None, help="write grids, results.jsonl, summary.json here")
    sampling_args(q)
    q.set_defaults(func=cmd_eval)
    p = sub.add_parser("train", help="train (or resume) an experiment in --workdir")
    _add_config_args(p)
    p.add_argument("--workdir", required=True, help="checkpoints, metrics, samples; resumed if it holds a run")
    p.add_argument("--platform", default=None, metavar="FILE[:k=v,...]",
                   help="tpu_configs/<name>.py: mesh, micro-batch (sets accumulation), remat, dtype, flags")
    p.add_argument("--start-over", action="store_true",
                   help="when no checkpoint in --workdir restores, move them aside and train from step 0 "
                        "(default: refuse)")
    p.add_argument("--vae", metavar="DIR", default=None,
                   help="pretrained diffusers AutoencoderKL dir (the SDXL-VAE) for the state: train.vae_from")
    p.add_argument("--coordinator", metavar="HOST:PORT", default=None,
                   help="multi-process: process 0's address (else $JANUSFLOW_COORDINATOR / $JAX_COORDINATOR_ADDRESS)")
    p.add_argument("--num-processes", type=int, default=None, help="multi-process: process count "
                   "(else $JANUSFLOW_NUM_PROCESSES / $JAX_NUM_PROCESSES)")
    p.add_argument("--process-id", type=int, default=None, help="multi-process: this process's index "
                   "(else $JANUSFLOW_PROCESS_ID / $JAX_PROCESS_ID)")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("plan", help="compile the train step for N simulated devices: per-device memory, "
                       "FLOPs, time at an MFU (nothing is allocated)")
    _add_config_args(p)
    p.add_argument("--devices", type=int, default=None, help="simulated devices (default: the platform's)")
    p.add_argument("--mesh", default=None, metavar="data=1,fsdp=8,tensor=1", help="mesh (after --platform)")
    p.add_argument("--platform", default=None, metavar="FILE[:k=v,...]", help="tpu_configs/<name>.py")
    p.add_argument("--batch", type=int, default=None, help="global batch (same und:gen:text ratios)")
    p.add_argument("--chip", default=None, help="peak FLOP/s for the time estimate: v4|v5e|v5p|h100|a100 "
                   "(default: the platform's)")
    p.add_argument("--mfu", type=float, default=None, help="model FLOPs utilisation for the estimate (0.5)")
    p.add_argument("--steps", type=int, default=None, help="steps to time (default: 426,000, paper stages 1-3)")
    p.add_argument("--json", default=None, metavar="OUT.json", help="write the numbers as JSON")
    p.add_argument("--compiler", default="auto", choices=("auto", "tpu", "cpu"),
                   help="tpu: the TPU compiler for the platform's topology (needs libtpu: pip install "
                   "'janusflow[tpu]'); cpu: the XLA:CPU estimate; auto: tpu when possible")
    p.set_defaults(func=cmd_plan)
    p = sub.add_parser("sweep", help="run (or --print) the members of an experiment file's sweep(); results.md")
    p.add_argument("--config", required=True, help="experiments/<file>.py[:arg] defining sweep(arg)")
    p.add_argument("--workdir", required=True, help="one sub-directory per member; results.md, learning_curves.png")
    p.add_argument("--only", default=None, help="comma-separated member names, e.g. A,F")
    p.add_argument("--print", action="store_true", help="print one launch command per member instead of running")
    p.add_argument("--launcher", default=None,
                   help="with --print: command prefix per member, e.g. 'tpu_configs/launch_tpu.sh NAME ZONE "
                        "PROJECT tpu_configs/v5p_64.py' (then spec, workdir and --set follow)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every member")
    p.set_defaults(func=cmd_sweep)
    bsub = _bench_group(sub)
    p = bsub.add_parser("train", help="train-step time, examples/s, tokens/s and MFU (synthetic data)")
    _add_config_args(p)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--latents", action="store_true",
                   help="feed precomputed latents (data.gen.latents=true): no VAE encoder in the step")
    p.add_argument("--compare", action="store_true",
                   help="time the step fed images and fed latents alternately in one process")
    p.set_defaults(func=cmd_bench_train)
    p = sub.add_parser("sample", help="text-to-image sampling (rectified flow, CFG, prompt KV cache)")
    p.add_argument("--checkpoint", required=True, help="janusflow checkpoint dir or official HF dir")
    p.add_argument("--vae", metavar="DIR", default=None,
                   help="diffusers AutoencoderKL dir (default CKPT/vae; not needed for a pixel VAE)")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json or its dir (default: CKPT)")
    p.add_argument("--prompt", action="append", default=[], help="a text prompt (repeatable)")
    p.add_argument("--prompts-file", default=None, help=".txt (a prompt a line) or .jsonl with 'prompt'")
    p.add_argument("--prompt-ids", action="append", default=[], metavar="1,2,3",
                   help="a tokenised prompt without the generation tag (repeatable; no tokenizer needed)")
    p.add_argument("--out", required=True, help="output directory (rerun: only missing images are sampled)")
    p.add_argument("--n", type=int, default=4, help="images per prompt")
    p.add_argument("--cfg", type=float, default=2.0, help="CFG weight w (1 = no guidance)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--solver", choices=("euler", "heun"), default="euler")
    p.add_argument("--save-latents", action="store_true", help="also write the final latents as .npy")
    p.add_argument("--batch-size", type=int, default=8, help="images per compiled call")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None, help="parameter dtype")
    p.add_argument("--compute-dtype", choices=("float32", "bfloat16"), default=None,
                   help="override the checkpoint's compute dtype")
    p.add_argument("--grid-max", type=int, default=64, help="images in grid.png")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_sample)
    p = sub.add_parser("chat", help="answer a question about an image")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--question", required=True)
    p.add_argument("--tokenizer", default=None, help="tokenizer.json or its dir (default: CKPT)")
    p.add_argument("--vae", default=None, help="only for the gen-encoder understanding ablations")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None)
    p.set_defaults(func=cmd_chat)
    # `bench` is shared: attach `sample` to the group whoever created it first.
    bsub = _bench_group(sub)
    p = bsub.add_parser("sample", help="s/ODE step, s/image, FLOPs, fraction of peak, prompt-cache speed-up")
    _add_config_args(p)
    p.add_argument("--batch", type=int, default=1, help="images (2x LLM rows with CFG)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--solver", choices=("euler", "heun"), default="euler")
    p.add_argument("--no-decode", action="store_true", help="skip timing the VAE decode")
    p.add_argument("--no-uncached", action="store_true", help="skip the recompute-the-prompt baseline")
    p.set_defaults(func=cmd_bench_sample)
    return parser


def _command(args) -> str:
    """``train``, ``data build``, ``eval geneval summarize``: the words the user typed."""
    words = [args.command]
    for dest in ("data_command", "bench_command", "eval_command", "geneval_command"):
        if getattr(args, dest, None):
            words.append(getattr(args, dest))
    return " ".join(words)


def one_line(e: BaseException) -> str:
    """An exception as one line: its message with newlines folded. Errors raised to be read
    (ours: ValueError, OSError, RuntimeError and their kin) are their message; any other gets
    its type's name in front (``KeyError: 'tag'``) and where to see more."""
    msg = " ".join(str(e).split())
    if len(msg) > 2000:
        msg = msg[:2000] + " ..."
    if msg and (type(e) is ValueError or isinstance(e, (ConfigError, OSError, RuntimeError))):
        return msg
    return f"{type(e).__name__}: {msg or '(no message)'} (run with --debug for the traceback)"


def main(argv=None) -> int:
    """Every error that reaches here is one line on stderr (``janusflow <command>: ...``) and a
    non-zero exit; ``janusflow --debug <command>`` shows the traceback instead."""
    args = build_parser().parse_args(argv)
    name = _command(args)
    try:
        return args.func(args)
    except ConfigError as e:
        if args.debug:
            raise
        print(f"janusflow {name}: config error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"janusflow {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 -- the CLI's net: one line, not a traceback
        if args.debug:
            raise
        print(f"janusflow {name}: error: {one_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
