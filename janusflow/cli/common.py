"""Flags and helpers several subcommands share."""

from __future__ import annotations

import argparse


def add_config_args(p: argparse.ArgumentParser):
    p.add_argument("--config", required=True,
                   help="experiments/<file>.py[:arg], a packaged experiment janusflow:NAME[:arg] (e.g. "
                        "janusflow:finetune:data=DIR,name=NAME,init=CKPT) or a model preset (tiny, janusflow_1_3b)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set model.llm.num_layers=2 (repeatable)")


def load_config_args(args):
    """The experiment config named by ``--config`` with the ``--set`` overrides applied."""
    from janusflow.configs.loader import apply_overrides, load_config
    return apply_overrides(load_config(args.config), args.set)
