"""The CLI's net: every error that reaches ``janusflow.cli.main.main`` is one line on stderr naming
the command, with a non-zero exit; ``--debug`` shows the traceback instead."""

import os

import pytest

from janusflow.cli import info as cli_info
from janusflow.cli import main as cli
from janusflow.train.workdir import WorkdirLock


def _failing(exc):
    def cmd(args):
        raise exc
    return cmd


@pytest.mark.parametrize("exc, line", [
    (KeyError("tag"), "janusflow info: error: KeyError: 'tag' (run with --debug for the traceback)"),
    (AttributeError("'list' object has no attribute 'get'"),
     "janusflow info: error: AttributeError: 'list' object has no attribute 'get' (run with --debug for the traceback)"),
    (RuntimeError("first line\n  second line"), "janusflow info: error: first line second line"),
    (FileNotFoundError(2, "No such file or directory", "x.json"),
     "janusflow info: error: [Errno 2] No such file or directory: 'x.json'"),
])
def test_any_error_is_one_line_naming_the_command(monkeypatch, capsys, exc, line):
    monkeypatch.setattr(cli_info, "cmd_info", _failing(exc))
    assert cli.main(["info", "--config", "tiny"]) == 1
    captured = capsys.readouterr()
    assert captured.err == line + "\n" and captured.out == ""


def test_debug_shows_the_traceback_and_interrupt_is_sane(monkeypatch, capsys):
    monkeypatch.setattr(cli_info, "cmd_info", _failing(KeyError("tag")))
    with pytest.raises(KeyError, match="tag"):
        cli.main(["--debug", "info", "--config", "tiny"])
    monkeypatch.setattr(cli_info, "cmd_info", _failing(KeyboardInterrupt()))
    assert cli.main(["info", "--config", "tiny"]) == 130
    assert capsys.readouterr().err == "janusflow info: interrupted\n"


def test_subcommands_are_named(tmp_path, capsys):
    # a results "file" that is a directory: no handler of the command catches IsADirectoryError
    assert cli.main(["eval", "geneval", "summarize", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("janusflow eval geneval summarize: error: ")


def test_train_on_a_held_workdir_is_one_line(tmp_path, capsys):
    work = str(tmp_path / "w")
    with WorkdirLock(work):
        rc = cli.main(["train", "--config", "tiny", "--workdir", work, "--set", "synthetic_data=true",
                       "--set", "train.steps=1"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1, err
    assert err.startswith(f"janusflow train: error: workdir {work} is in use by another run (pid {os.getpid()} on host ")
    assert sorted(os.listdir(work)) == []   # nothing written, the holder's lock file removed by the holder
