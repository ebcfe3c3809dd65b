"""``janusflow eval``: GenEval (generate / score / summarize), the shapes benchmark and the shapes-world diagnostics."""

from __future__ import annotations

import os
import sys

from janusflow.cli.common import add_config_args, load_config_args


def _conditioning(args):
    from janusflow.shapes import conditioning
    ts = tuple(float(x) for x in (args.t or ",".join(map(str, conditioning.SHAPE_GAP_TS if args.shape_swap
                                                         else conditioning.DEFAULT_TS))).split(","))
    out = conditioning.evaluate_checkpoint(args.checkpoint, load_config_args(args), n=args.n, ts=ts, seed=args.seed,
                                           shape_swap=args.shape_swap)
    print(conditioning.summary(out))
    return out


def _refuse_existing_out(args) -> bool:
    if os.path.exists(args.out) and not args.force:
        print(f"error: --out {args.out} exists; pass --force to replace it", file=sys.stderr)
        return True
    return False


def _denoise(args):
    from janusflow.shapes import denoise
    ts = tuple(float(x) for x in args.t.split(","))
    if _refuse_existing_out(args):
        return 2
    out = denoise.evaluate_checkpoint(args.checkpoint, load_config_args(args), n=args.n, ts=ts, seed=args.seed,
                                      out_png=args.out)
    print(denoise.summary(out))
    print(f"wrote {args.out} (rows: clean, then t = {args.t}; each cell z_t | x_hat)")
    return out


def _trajectory(args):
    from janusflow.shapes import denoise
    if _refuse_existing_out(args):
        return 2
    show = tuple(int(x) for x in args.show.split(","))
    ts = denoise.trajectory_checkpoint(args.checkpoint, tuple(args.prompt or denoise.SHAPES_PROMPTS),
                                       steps=args.steps, cfg_weight=args.cfg, seed=args.seed, show=show,
                                       out_png=args.out)
    print(f"wrote {args.out} (rows: final samples, then t = {', '.join(f'{t:.3g}' for t in ts)}; "
          "each cell z | x_hat)")
    return {"t": ts, "out": args.out}


def _encoder(args):
    from janusflow.checkpoint.model_io import load_model
    from janusflow.shapes import encoder_probe
    model, mcfg = load_model(args.checkpoint)
    if not mcfg.uses_siglip:
        print(f"janusflow eval encoder: error: {args.checkpoint} has no SigLIP encoder "
              f"(und_encoder={mcfg.und_encoder!r}, repa={mcfg.repa})", file=sys.stderr)
        return 1
    out = encoder_probe.encoder_probe(model.und_encoder, mcfg.siglip, n=args.n, seed=args.seed)
    print(encoder_probe.summary(out))
    return out


def _shapes(args):
    from janusflow.eval import geneval
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
    return shapes_bench.run_shapes_bench(fn, args.n_per_tag, args.n_images, args.seed,
                                         args.outdir, batch_size=args.batch_size, progress=True)


def _geneval_generate(args):
    from janusflow.eval import geneval
    return geneval.run_generate(args.checkpoint, args.metadata, args.outdir, n=args.n,
                                cfg_weight=args.cfg, steps=args.steps, seed=args.seed,
                                batch_size=args.batch_size, solver=args.solver,
                                vae_path=args.vae, dtype=args.dtype)


def _geneval_summarize(args):
    from janusflow.eval.geneval_layout import load_prompts
    from janusflow.eval.geneval_score import summarize
    expected = load_prompts(args.metadata)[0]      # default: the shipped official list
    return summarize(args.results, expected, args.n, strict=not args.allow_incomplete)


def _geneval_score(args):
    from janusflow.eval import geneval
    return geneval.run_score(args.outdir, detections=args.detections, detector=args.detector,
                             colors=args.colors, out_jsonl=args.out, metadata=args.metadata,
                             n=args.n, strict=not args.allow_incomplete,
                             mask2former=args.mask2former, object_names=args.object_names,
                             device=args.device)


def cmd_eval(args) -> int:
    """Runs the chosen evaluation (``args.evaluate``: a dict of results, or an exit code when it
    refused before any work) and prints its results as JSON."""
    import json

    from janusflow.eval.geneval_layout import ProtocolMismatch
    from janusflow.eval.geneval_score import IncompleteResultsError, format_summary
    try:
        if getattr(args, "checkpoint", None):
            from janusflow.checkpoint.model_io import resolve_checkpoint
            args.checkpoint = resolve_checkpoint(args.checkpoint, lambda m: print(m, file=sys.stderr))
        out = args.evaluate(args)
    except (IncompleteResultsError, ProtocolMismatch, FileNotFoundError, ImportError, KeyError,
            ValueError) as e:
        print(f"janusflow eval: error: {e}", file=sys.stderr)
        return 1
    if isinstance(out, int):
        return out
    if "per_tag" in out and args.eval_command == "geneval":
        print(format_summary(out))
    print(json.dumps(out, indent=None if args.eval_command == "geneval" else 2, default=str))
    return 0


def register(sub) -> None:
    p = sub.add_parser("eval", help="GenEval (generate / score / summarize) and the shapes benchmark")
    esub = p.add_subparsers(dest="eval_command", required=True)
    g = esub.add_parser("geneval", help="the GenEval benchmark (official prompt file and layout)")
    gsub = g.add_subparsers(dest="geneval_command", required=True)

    def sampling_args(q):
        q.add_argument("--cfg", type=float, default=None,
                       help="CFG weight w (default: JanusFlow 2, the paper's FID protocol; Janus-Pro 5)")
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
    q.set_defaults(func=cmd_eval, evaluate=_geneval_generate)
    q = gsub.add_parser("summarize", help="per-tag and overall score of a results.jsonl (official schema)")
    q.add_argument("results", metavar="RESULTS.jsonl")
    q.add_argument("--metadata", default=None, help="prompt file to check completeness against "
                   "(default: the official GenEval list shipped with janusflow)")
    q.add_argument("--n", type=int, default=None, help="images per prompt expected (default: the most seen)")
    q.add_argument("--allow-incomplete", action="store_true", help="report per-tag scores, no overall")
    q.set_defaults(func=cmd_eval, evaluate=_geneval_summarize)
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
    q.set_defaults(func=cmd_eval, evaluate=_geneval_score)
    q = esub.add_parser("conditioning", help="does the generator read its prompt? RF loss with shuffled "
                        "minus correct prompts on validation examples (shapes/conditioning.py)")
    q.add_argument("--checkpoint", required=True, help="a saved model directory (e.g. WORKDIR/stage3/model_ema)")
    add_config_args(q)
    q.add_argument("--n", type=int, default=64, help="validation examples")
    q.add_argument("--t", default=None, help="comma-separated t values (0 = noise; default 0.1,0.3,0.5,0.7, "
                   "with --shape-swap 0.05,0.1,0.2,0.3)")
    q.add_argument("--shape-swap", action="store_true", help="the shape gap: one-object shapes scenes with their "
                   "prompt vs the same prompt naming another shape (same colour)")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_eval, evaluate=_conditioning)
    q = esub.add_parser("denoise", help="one-step denoising grid: x_hat = z_t + (1-t) v for validation images "
                        "noised to several t (shapes/denoise.py)")
    q.add_argument("--checkpoint", required=True, help="a saved model directory (e.g. WORKDIR/stage3/model_ema)")
    add_config_args(q)
    q.add_argument("--out", required=True, help="PNG to write")
    q.add_argument("--force", action="store_true", help="replace an existing --out file")
    q.add_argument("--n", type=int, default=8, help="validation examples (grid columns)")
    q.add_argument("--t", default="0.1,0.2,0.3,0.5,0.7,0.9", help="comma-separated t values (0 = noise)")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_eval, evaluate=_denoise)
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
    q.set_defaults(func=cmd_eval, evaluate=_trajectory)
    q = esub.add_parser("encoder", help="what the SigLIP encoder (REPA's target) knows: ridge probes of shape "
                        "and colour on one-object scenes, beside a random tower's (shapes/encoder_probe.py)")
    q.add_argument("--checkpoint", required=True, help="a saved model directory (e.g. WORKDIR/stage3/model_ema)")
    q.add_argument("--n", type=int, default=1200, help="one-object scenes (3/4 fit the probe, 1/4 score it)")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_eval, evaluate=_encoder)
    q = esub.add_parser("shapes", help="GenEval-style benchmark on the shapes world (analytic detector)")
    q.add_argument("--checkpoint", default=None)
    q.add_argument("--ground-truth", action="store_true", help="score ground-truth renders (sanity check)")
    q.add_argument("--size", type=int, default=32, help="render size for --ground-truth")
    q.add_argument("--n-per-tag", type=int, default=16)
    q.add_argument("--n-images", type=int, default=2)
    q.add_argument("--batch-size", type=int, default=16)
    q.add_argument("--outdir", default=None, help="write grids, results.jsonl, summary.json here")
    sampling_args(q)
    q.set_defaults(func=cmd_eval, evaluate=_shapes)
