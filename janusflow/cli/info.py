"""``janusflow info``: parameter count per component and FLOPs per training token."""

from __future__ import annotations

from janusflow.cli.common import add_config_args, load_config_args


def cmd_info(args) -> int:
    from janusflow.perf.info import report
    cfg = load_config_args(args)
    print(f"experiment: {cfg.name}")
    print(report(cfg.model, seq_len=cfg.seq_len))
    return 0


def register(sub) -> None:
    p = sub.add_parser("info", help="parameter count per component and FLOPs per training token")
    add_config_args(p)
    p.set_defaults(func=cmd_info)
