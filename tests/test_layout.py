"""The package's house rules, checked on the source: every module imports on its own in a fresh
interpreter, the import graph (lazy imports inside functions included) has no cycle, no module
imports another's private name, and the config schema loads nothing heavy."""

import ast
import os
import subprocess
import sys

import pytest

import conftest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "janusflow")


def _modules() -> dict:
    mods = {}
    for d, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py") and f != "__main__.py":
                rel = os.path.relpath(os.path.join(d, f), ROOT)[:-3].replace(os.sep, ".")
                mods[rel.removesuffix(".__init__")] = os.path.join(d, f)
    return mods


def _imports(mods: dict) -> tuple[dict, list]:
    """Module -> the package modules it imports (anywhere in its body), and every
    ``from janusflow.x import _private`` as (importer, name)."""
    def owner(name):
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name
    def is_private(name):
        return name.startswith("_") and not name.startswith("__")
    edges, private = {m: set() for m in mods}, []
    for m, path in mods.items():
        tree = ast.parse(open(path).read())
        aliases = {}                # local name -> one of our modules (``from janusflow.x import y``)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                edges[m] |= {owner(a.name) for a in node.names if a.name.startswith("janusflow")}
                aliases.update({a.asname: a.name for a in node.names if a.asname and a.name in mods})
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("janusflow"):
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    edges[m].add(owner(sub) if sub in mods else owner(node.module))
                    if sub in mods:
                        aliases[a.asname or a.name] = sub
                    if is_private(a.name):
                        private.append((m, sub))
        # ``hf._jnp_dtype(...)``: a private name reached through an imported module
        private += [(m, f"{aliases[n.value.id]}.{n.attr}") for n in ast.walk(tree)
                    if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
                    and n.value.id in aliases and is_private(n.attr) and aliases[n.value.id] != m]
        edges[m] -= {m, ""}
    return edges, private


def _cycle(edges: dict) -> list:
    """One import cycle as a list of modules, or [] (iterative DFS: white/grey/black)."""
    state = dict.fromkeys(edges, 0)
    for start in edges:
        if state[start]:
            continue
        stack = [(start, iter(sorted(edges[start])))]
        state[start] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                path = [n for n, _ in stack]
                return path[path.index(nxt):] + [nxt]
            elif state.get(nxt) == 0:
                state[nxt] = 1
                stack.append((nxt, iter(sorted(edges[nxt]))))
    return []


def test_the_import_graph_has_no_cycle_and_no_private_names_across_modules():
    edges, private = _imports(_modules())
    assert _cycle(edges) == []
    assert private == []


def test_a_private_name_reached_through_a_module_counts(tmp_path):
    (tmp_path / "a.py").write_text("def _x(): pass\n")
    (tmp_path / "b.py").write_text("from janusflow import a\nfrom janusflow import a as c\na._x()\nc._y\na.__name__\n")
    mods = {"janusflow.a": str(tmp_path / "a.py"), "janusflow.b": str(tmp_path / "b.py")}
    _, private = _imports(mods)
    assert sorted(private) == [("janusflow.b", "janusflow.a._x"), ("janusflow.b", "janusflow.a._y")]


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) == []


def _fresh(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def _third_party_top_level(mods: dict) -> list:
    """The outside packages our modules import at module level (not inside functions)."""
    names = set()
    for path in mods.values():
        for node in ast.parse(open(path).read()).body:
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
    return sorted(n for n in names if not n.startswith("janusflow") and n != "__future__")


# Preload the outside packages once, then fork one child per module: each child starts with no
# janusflow module loaded, so an import that only works after another of ours happens to be loaded
# (a cycle broken by import order) still fails, without paying ~90 jax imports.
_FORK_SERVER = """
import importlib, os, sys
pre, mods = sys.argv[1].split(","), sys.argv[2:]
for p in pre:
    try:
        importlib.import_module(p)
    except Exception:
        pass   # the module that needs it reports the failure itself
assert not [m for m in sys.modules if m.split(".")[0] == "janusflow"]
bad = []
for m in mods:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            importlib.import_module(m)
            code = 0
        except BaseException as e:
            os.write(w, f"{type(e).__name__}: {e}".encode()[-2000:])
            code = 1
        os._exit(code)
    os.close(w)
    msg = b""
    while chunk := os.read(r, 4096):
        msg += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if status:
        bad.append(m + ": " + (msg.decode() or f"exit status {status}"))
print("\\n".join(bad)); sys.exit(1 if bad else 0)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_every_module_imports_on_its_own_in_a_fresh_interpreter():
    mods = _modules()
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", _FORK_SERVER, ",".join(_third_party_top_level(mods)), *sorted(mods)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_import_check_catches_an_import_that_needs_another_module_first(tmp_path):
    """The fork server fails a module whose import works only once another of ours is loaded."""
    pkg = tmp_path / "janusflow"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("import janusflow\nX = janusflow.b.Y\n")   # needs janusflow.b imported first
    (pkg / "b.py").write_text("Y = 1\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", _FORK_SERVER, "json", "janusflow.b", "janusflow.a"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stdout.strip().startswith("janusflow.a: AttributeError"), r.stdout + r.stderr


def test_the_config_schema_imports_nothing_heavy():
    r = _fresh("import sys\n"
               "from janusflow.configs import schema, loader, presets  # noqa: F401\n"
               "print(sorted(m for m in ('jax', 'flax', 'numpy', 'PIL', 'tensorflow_datasets', 'grain', 'torch')"
               " if m in sys.modules))")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_conftest_overrides_an_existing_device_count_and_keeps_other_flags():
    flags = conftest.with_device_count("--xla_cpu_fast=1 --xla_force_host_platform_device_count=1", 8)
    assert flags.split() == ["--xla_cpu_fast=1", "--xla_force_host_platform_device_count=8"]
    assert conftest.with_device_count("", 8) == "--xla_force_host_platform_device_count=8"
