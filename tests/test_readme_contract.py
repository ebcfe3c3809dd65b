"""The README contract: its test command is exactly what .ci/run runs, and the main job's
command is the first install line of the README."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(*parts):
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
        return f.read()


def test_ci_runs_exactly_the_readme_test_command():
    readme = _read("README.md")
    lines = [l for l in readme.splitlines() if l.startswith('pip install -e ".[test]" && ')]
    assert len(lines) == 1, f"expected one test command in README.md, found {len(lines)}"
    pytest_cmd = lines[0].split(" && ", 1)[1]
    ci = [l.strip() for l in _read(".ci", "run").splitlines() if l.strip().startswith("python -m pytest")]
    assert ci == [pytest_cmd], f".ci/run runs {ci}, README.md says {pytest_cmd!r}"
    assert re.search(r'-m "not slow"', pytest_cmd), "the CI tier leaves the slow tests out by name"


def test_the_slow_tier_command_in_the_readme_selects_the_slow_marker():
    readme = _read("README.md")
    assert any(l.startswith("python -m pytest") and "-m slow" in l for l in readme.splitlines())
    assert "slow" in _read("tests", "conftest.py")
