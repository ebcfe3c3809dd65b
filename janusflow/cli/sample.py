"""``janusflow sample``: text-to-image sampling."""

from __future__ import annotations

import sys



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
        janus_pro = cfg.head.autoregressive
        if janus_pro:           # the AR sampler's fast layout, made once (the old copy is freed)
            from janusflow.sample.layout import decoding_layout
            model, cfg = decoding_layout(model, cfg)
        if tok is not None:
            from janusflow.data.tokenizer import generation_prompt_ids
            ids = [generation_prompt_ids(tok, t, cfg.head) for t in texts]
        else:
            ids = [run.parse_ids(x) for x in args.prompt_ids]
        out = run.sample_to_dir(
            model, vae, cfg, ids, args.out, prompts_text=texts or None, n=args.n,
            cfg_weight=run.default_cfg_weight(cfg, args.cfg),
            temperature=args.temperature, steps=args.steps, seed=args.seed, solver=args.solver,
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


def register(sub) -> None:
    p = sub.add_parser("sample", help="text-to-image sampling (rectified flow, CFG, prompt KV cache)")
    p.add_argument("--checkpoint", required=True, help="janusflow checkpoint dir or official HF dir")
    p.add_argument("--vae", metavar="DIR", default=None,
                   help="diffusers AutoencoderKL dir (default CKPT/vae; not needed for a pixel VAE)")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json or its dir (default: CKPT)")
    p.add_argument("--prompt", action="append", default=[], help="a text prompt (repeatable)")
    p.add_argument("--prompts-file", default=None, help=".txt (a prompt a line) or .jsonl with 'prompt'")
    p.add_argument("--prompt-ids", action="append", default=[], metavar="1,2,3",
                   help="a tokenised prompt without the generation tag (repeatable; no tokenizer "
                        "needed); for Janus-Pro ending in <begin_of_image>, as the official sequence")
    p.add_argument("--out", required=True, help="output directory (rerun: only missing images are sampled)")
    p.add_argument("--n", type=int, default=4, help="images per prompt")
    p.add_argument("--cfg", type=float, default=None,
                   help="CFG weight w (1 = no guidance; default 2 for JanusFlow, 5 for Janus-Pro)")
    p.add_argument("--temperature", type=float, default=1.0, help="Janus-Pro image-token temperature")
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
