"""The ``janusflow`` command. Each subcommand parses its flags here and calls one function in
the package, so everything the CLI does is also a Python API."""

from __future__ import annotations

import argparse
import sys

from janusflow.config import ConfigError


def _add_config_args(p: argparse.ArgumentParser):
    p.add_argument("--config", required=True,
                   help="experiments/<file>.py[:arg] or a model preset (tiny, janusflow_1_3b)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set model.llm.num_layers=2 (repeatable)")


def _load(args):
    from janusflow.config_loader import apply_overrides, load_config
    return apply_overrides(load_config(args.config), args.set)


def cmd_info(args) -> int:
    from janusflow.info import report
    cfg = _load(args)
    print(f"experiment: {cfg.name}")
    print(report(cfg.model, seq_len=cfg.seq_len))
    return 0


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
            say(f"reading {args.from_hf} ({args.dtype or 'float32'})")
            model, cfg = hf.load_janusflow_hf(args.from_hf, args.dtype or "float32",
                                              progress=progress, log=say)
            say(f"writing {args.out}")
            path = model_io.save_model(args.out, model, cfg)
        else:
            say(f"reading {args.to_hf}")
            model, cfg = model_io.load_model(args.to_hf, args.dtype, progress=progress, log=say)
            say(f"writing {args.out}")
            hf.export_janusflow_hf(model, cfg, args.out, progress=progress)
            path = args.out
    except ConfigError:
        raise
    except (CheckpointMismatch, FileNotFoundError, FileExistsError, ImportError, ValueError) as e:
        say(f"janusflow convert: error: {e}")
        return 1
    say(f"done in {time.time() - start:.0f}s: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="janusflow", description=__doc__)
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
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"janusflow {args.command}: config error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
