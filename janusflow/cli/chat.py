"""``janusflow chat``: answer a question about an image."""

from __future__ import annotations

import sys


def cmd_chat(args) -> int:
    from janusflow.checkpoint import model_io
    from janusflow.checkpoint.torch_layout import CheckpointMismatch
    from janusflow.sample import run
    from janusflow.sample.chat import answer, load_image
    from janusflow.sample.layout import decoding_layout
    try:
        if not args.question.strip():
            raise ValueError("--question is empty")
        image = load_image(args.image)
        args.checkpoint = model_io.resolve_checkpoint(args.checkpoint, lambda m: print(m, file=sys.stderr))
        tok = run.load_tokenizer(args.checkpoint, args.tokenizer)
        model, cfg = model_io.load_model(args.checkpoint, args.dtype)
        model, cfg = decoding_layout(model, cfg)     # the decoder's layout, before anything holds the old copy
        vae = (run.load_vae_for(cfg, args.checkpoint, args.vae, args.dtype)
               if cfg.und.reads_latents else None)
        text = answer(model, cfg, tok, [image], [args.question], max_new_tokens=args.max_new_tokens,
                      temperature=args.temperature, top_p=args.top_p, seed=args.seed, vae=vae)[0]
    except (CheckpointMismatch, FileNotFoundError, ValueError) as e:
        print(f"janusflow chat: error: {e}", file=sys.stderr)
        return 1
    print(text)
    return 0


def register(sub) -> None:
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
