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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="janusflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="parameter count per component and FLOPs per training token")
    _add_config_args(p)
    p.set_defaults(func=cmd_info)
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
