"""``janusflow demo``: its flags and what it runs (the CLI only attaches this parser)."""

from __future__ import annotations

import argparse
import sys

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help="local web demo (Gradio): image understanding and generation tabs "
                       "(pip install 'janusflow[demo]')")
    p.add_argument("--checkpoint", required=True, help="janusflow checkpoint or workdir, or official HF dir")
    p.add_argument("--vae", metavar="DIR", default=None,
                   help="diffusers AutoencoderKL dir (default CKPT/vae; not needed for a pixel VAE)")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json or its dir (default: CKPT)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None, help="parameter dtype")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, default=7860)
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    if not 0 < args.port < 65536:
        raise ValueError(f"--port {args.port}: must be from 1 to 65535")
    try:
        from janusflow.demo import app
    except ImportError as e:   # checked before the model load, not after it
        print(f"janusflow demo: error: the demo needs Gradio ({e}): pip install 'janusflow[demo]'",
              file=sys.stderr)
        return 1
    from janusflow.demo.session import DemoSession

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    session = DemoSession.load(args.checkpoint, vae=args.vae, tokenizer=args.tokenizer, dtype=args.dtype, log=log)
    if args.host not in LOOPBACK:
        log(f"warning: serving on {args.host}: anyone who can reach this address can use the model")
    app.serve(session, host=args.host, port=args.port)
    return 0
