"""``janusflow convert``: official JanusFlow HF checkpoint <-> janusflow checkpoint."""

from __future__ import annotations

import sys

from janusflow.configs.schema import ConfigError


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
            layout = {"official": None, "transformers": hf.TRANSFORMERS_JANUS}[args.layout]
            hf.export_janusflow_hf(model, cfg, args.out, progress=progress, layout=layout, log=say)
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


def register(sub) -> None:
    p = sub.add_parser("convert", help="official JanusFlow HF checkpoint <-> janusflow checkpoint")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-hf", metavar="DIR",
                     help="HF directory (config.json + model*.safetensors or pytorch_model*.bin)")
    src.add_argument("--to-hf", metavar="CKPT_DIR", help="janusflow checkpoint directory to export")
    p.add_argument("--layout", choices=("official", "transformers"), default="official",
                   help="--to-hf: DeepSeek's official layout, or transformers' own Janus classes "
                        "(JanusForConditionalGeneration; Janus-Pro only). --from-hf reads either "
                        "from config.json")
    p.add_argument("--out", required=True, help="new output directory")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                   help="parameter dtype (default: float32 from HF, the saved dtype to HF)")
    p.set_defaults(func=cmd_convert)
