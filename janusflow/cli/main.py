"""The ``janusflow`` command. Each subcommand is a module of this package with a
``register(sub)`` that adds its parser (flags, help, ``func``); the ``cmd_*`` functions parse
nothing themselves and call one function of the package, so everything the CLI does is also a
Python API. A new subcommand: a module here with ``register``, and its name in ``COMMANDS``."""

from __future__ import annotations

import argparse
import importlib
import sys

from janusflow.configs.schema import ConfigError

# one module per subcommand, in the order `janusflow --help` lists them
COMMANDS = ("info", "convert", "data", "bench", "eval", "train", "plan", "sweep", "sample", "chat", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="janusflow", description=__doc__)
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error instead of its one-line message")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"janusflow.cli.{name}").register(sub)
    return parser


def _command(args) -> str:
    """``train``, ``data build``, ``eval geneval summarize``: the words the user typed."""
    words = [args.command]
    for dest in ("data_command", "bench_command", "eval_command", "geneval_command"):
        if getattr(args, dest, None):
            words.append(getattr(args, dest))
    return " ".join(words)


def one_line(e: BaseException) -> str:
    """An exception as one line: its message with newlines folded. Errors raised to be read
    (ours: ValueError, OSError, RuntimeError and their kin) are their message; any other gets
    its type's name in front (``KeyError: 'tag'``) and where to see more."""
    msg = " ".join(str(e).split())
    if len(msg) > 2000:
        msg = msg[:2000] + " ..."
    if msg and (type(e) is ValueError or isinstance(e, (ConfigError, OSError, RuntimeError))):
        return msg
    return f"{type(e).__name__}: {msg or '(no message)'} (run with --debug for the traceback)"


def main(argv=None) -> int:
    """Every error that reaches here is one line on stderr (``janusflow <command>: ...``) and a
    non-zero exit; ``janusflow --debug <command>`` shows the traceback instead."""
    args = build_parser().parse_args(argv)
    name = _command(args)
    try:
        return args.func(args)
    except ConfigError as e:
        if args.debug:
            raise
        print(f"janusflow {name}: config error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"janusflow {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 -- the CLI's net: one line, not a traceback
        if args.debug:
            raise
        print(f"janusflow {name}: error: {one_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
