"""``janusflow demo``: the local web demo (its flags and runner live in janusflow.demo.command)."""

from __future__ import annotations


def register(sub) -> None:
    from janusflow.demo.command import add_parser
    add_parser(sub)
