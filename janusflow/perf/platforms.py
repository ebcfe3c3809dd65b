"""Hardware platforms: what a TPU slice or GPU node is (devices, hosts, peak FLOP/s, memory) and
how we run on it (mesh, per-device micro-batch, remat, compute dtype, XLA/libtpu flags).

Platform files live in ``tpu_configs/<name>.py`` and define ``get_platform()`` returning a
:class:`Platform`, just as experiment files define ``get_config()``. ``--platform FILE[:k=v,...]``
loads one (``k=v`` overrides fields, e.g. ``tpu_configs/v5p_64.py:micro_batch=8``) and
:func:`apply_platform` turns an experiment into the run for that platform: the mesh, remat and
dtype, and the gradient accumulation that keeps the experiment's global batch.

Nothing here imports jax at module level: the CLI parent process of ``janusflow plan`` loads
platforms before it starts the child that owns the (simulated) devices.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Optional

from janusflow.configs.schema import REMAT_POLICIES, ConfigError, ExperimentConfig, MeshConfig


@dataclass(frozen=True)
class Chip:
    """One accelerator (one JAX device): dense bf16 peak and memory, with where they come from."""
    name: str
    peak_flops: float            # dense bf16 FLOP/s per device
    hbm_bytes: float             # memory per device
    source: str
    megacore: bool = False       # two TensorCores driven as one device (TPU v4, v5p)


# Datasheet numbers (per chip = per JAX device: v4 and v5p run their two TensorCores as one
# megacore device; v5e has one TensorCore per chip).
CHIPS = {
    "v4": Chip("TPU v4", 275e12, 32 * 2**30,
               "https://cloud.google.com/tpu/docs/v4 (275 TFLOPS bf16, 32 GiB HBM2 per chip)", megacore=True),
    "v5e": Chip("TPU v5e", 197e12, 16e9,
                "https://cloud.google.com/tpu/docs/v5e (197 TFLOPS bf16, 16 GB HBM2 per chip)"),
    "v5p": Chip("TPU v5p", 459e12, 95e9,
                "https://cloud.google.com/tpu/docs/v5p (459 TFLOPS bf16, 95 GB HBM2e per chip)", megacore=True),
    "h100": Chip("NVIDIA H100 SXM", 989e12, 80e9,
                 "NVIDIA H100 SXM5 datasheet: 989.4 TFLOPS dense BF16 tensor core (1979 with "
                 "sparsity), 80 GB HBM3"),
    "a100_40": Chip("NVIDIA A100 40GB", 312e12, 40e9,
                    "NVIDIA A100 datasheet: 312 TFLOPS dense BF16 tensor core, 40 GB HBM2"),
    "l4": Chip("NVIDIA L4", 121e12, 24e9,
               "NVIDIA L4 datasheet: 121 TFLOPS dense BF16 tensor core (242 with sparsity), 24 GB GDDR6"),
    "a100": Chip("NVIDIA A100 SXM 80GB", 312e12, 80e9,
                 "NVIDIA A100 datasheet: 312 TFLOPS dense BF16 tensor core (624 with sparsity), "
                 "80 GB HBM2e"),
}


@dataclass(frozen=True)
class Platform:
    """A slice/node and how to run JanusFlow on it.

    ``micro_batch`` counts examples per *batch shard* per micro-step; the batch is sharded over
    ``data x fsdp`` (``tensor`` shards the weights, not the batch), so with ``tensor == 1`` it is
    the per-device micro-batch and ``global batch = micro_batch x devices x accum_steps``.
    """
    name: str                    # the accelerator type as gcloud names it, e.g. "v5p-64"
    chip: str                    # key of CHIPS
    devices: int                 # JAX devices in the whole slice/node
    hosts: int                   # VMs / processes (one per TPU VM)
    mesh: MeshConfig
    micro_batch: int
    remat: str = "block"
    dtype: str = "bfloat16"
    env: dict = field(default_factory=dict)   # exported before the TPU/GPU runtime starts
    notes: str = ""
    # TPU topology as libtpu names it ("v4:2x2x1", "v5e:4x4"): `janusflow plan` compiles for
    # it with the TPU compiler when libtpu is installed. Empty: no TPU (XLA:CPU estimate).
    topology: str = ""

    def __post_init__(self):
        if self.chip not in CHIPS:
            raise ConfigError(f"Platform.chip: unknown chip {self.chip!r}; known: {sorted(CHIPS)}")
        for n in ("devices", "hosts", "micro_batch"):
            v = getattr(self, n)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"Platform.{n}: must be a positive int, got {v!r}")
        if self.devices % self.hosts:
            raise ConfigError(f"Platform {self.name}: {self.devices} devices do not split evenly "
                              f"over {self.hosts} hosts")
        self.mesh_shape()  # raises ConfigError when the mesh does not cover the devices
        # the same checks ModelConfig applies, so a bad platform fails at load, not at training
        if self.remat not in REMAT_POLICIES:
            raise ConfigError(f"Platform.remat: must be one of {', '.join(REMAT_POLICIES)}; "
                              f"got {self.remat!r}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"Platform.dtype: must be float32|bfloat16, got {self.dtype!r}")
        for k, v in self.env.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise ConfigError(f"Platform.env: names and values must be strings, got {k!r}={v!r}")
        if self.topology:
            kind, _, dims = self.topology.partition(":")
            try:
                sizes = [int(x) for x in dims.split("x")]
            except ValueError:
                sizes = []
            if not kind or not sizes or math.prod(sizes) != self.devices:
                raise ConfigError(f"Platform.topology: {self.topology!r} must be <tpu>:<AxBxC> with "
                                  f"{self.devices} chips (the platform's devices)")

    @property
    def chips_per_host_bounds(self) -> tuple:
        """The chips one host drives, as libtpu's (x, y, z) bounds (4 per VM: 2x2x1)."""
        per_host = self.devices // self.hosts
        return {1: (1, 1, 1), 2: (2, 1, 1), 4: (2, 2, 1), 8: (2, 4, 1)}.get(per_host, (per_host, 1, 1))

    @property
    def spec(self) -> Chip:
        return CHIPS[self.chip]

    def mesh_shape(self) -> tuple:
        """(data, fsdp, tensor) with -1 resolved against ``devices``."""
        sizes = [self.mesh.data, self.mesh.fsdp, self.mesh.tensor]
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if self.devices % known:
                raise ConfigError(f"Platform {self.name}: mesh {self.mesh} cannot fill {self.devices} devices")
            sizes[sizes.index(-1)] = self.devices // known
        if math.prod(sizes) != self.devices:
            raise ConfigError(f"Platform {self.name}: mesh data={sizes[0]} x fsdp={sizes[1]} x "
                              f"tensor={sizes[2]} = {math.prod(sizes)} slots, but the platform has "
                              f"{self.devices} devices")
        return tuple(sizes)

    @property
    def batch_shards(self) -> int:
        d, f, _ = self.mesh_shape()
        return d * f


# ----------------------------------------------------------------------------- loading
TPU_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tpu_configs")


def _parse_value(raw: str, current, key: str):
    if isinstance(current, bool):
        if raw.lower() in ("true", "1", "yes", "false", "0", "no"):
            return raw.lower() in ("true", "1", "yes")
        raise ConfigError(f"--platform {key}={raw}: expected a bool")
    if isinstance(current, int):
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"--platform {key}={raw}: expected an int") from None
    if isinstance(current, str):
        return raw
    raise ConfigError(f"--platform {key}: cannot override a field of type {type(current).__name__}")


def override(platform: Platform, items: str) -> Platform:
    """``"micro_batch=8,remat=dots,fsdp=16,data=2"``: platform fields, plus the mesh axes
    ``data``/``fsdp``/``tensor`` by name."""
    changes, mesh = {}, {}
    for kv in filter(None, (s.strip() for s in items.split(","))):
        key, eq, raw = kv.partition("=")
        if not eq:
            raise ConfigError(f"--platform ...:{kv}: expected key=value")
        if key in ("data", "fsdp", "tensor"):
            mesh[key] = _parse_value(raw, 1, key)
        elif key in ("micro_batch", "remat", "dtype", "hosts", "devices", "chip"):
            changes[key] = _parse_value(raw, getattr(platform, key), key)
        else:
            raise ConfigError(f"--platform ...:{key}=: unknown key; known: micro_batch, remat, "
                              "dtype, chip, devices, hosts, data, fsdp, tensor")
    if mesh:
        changes["mesh"] = dataclasses.replace(platform.mesh, **mesh)
    return dataclasses.replace(platform, **changes) if changes else platform


def resolve_path(spec: str) -> str:
    """A platform file path, or a bare name (``v5p_64``) looked up in the repo's tpu_configs/."""
    if os.path.isfile(spec):
        return spec
    if not spec.endswith(".py") and os.sep not in spec:
        cand = os.path.join(TPU_CONFIGS, spec + ".py")
        if os.path.isfile(cand):
            return cand
    known = sorted(f[:-3] for f in os.listdir(TPU_CONFIGS) if f.endswith(".py")) if os.path.isdir(TPU_CONFIGS) else []
    raise ConfigError(f"--platform: no such file {spec!r} (platform files: tpu_configs/<name>.py; "
                      f"known names: {', '.join(known) or 'none'})")


def load_platform(spec: str) -> Platform:
    """``tpu_configs/v5p_64.py`` or ``v5p_64``, optionally ``:key=value,...`` overrides."""
    path, _, arg = spec.partition(":")
    path = resolve_path(path)
    mod_spec = importlib.util.spec_from_file_location(f"_janusflow_platform_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    if not hasattr(module, "get_platform"):
        raise ConfigError(f"{path} defines no get_platform()")
    platform = module.get_platform()
    if not isinstance(platform, Platform):
        raise ConfigError(f"{path}: get_platform must return a janusflow.perf.platforms.Platform, "
                          f"got {type(platform).__name__}")
    return override(platform, arg) if arg else platform


# ----------------------------------------------------------------------------- applying
def apply_platform(cfg: ExperimentConfig, platform: Platform,
                   log: Optional[Callable[[str], None]] = None) -> ExperimentConfig:
    """``cfg`` run on ``platform``: its mesh, remat and compute dtype, and
    ``accum_steps = global batch / (micro_batch x batch shards)``.

    Every task sub-batch (und / gen / text) must split into ``accum_steps`` equal micro-batches
    whose rows spread evenly over the batch shards (``train/step.py::_micro`` takes row
    ``i*accum + a`` into micro-batch ``a``), i.e. be a multiple of ``batch shards x accum``. The
    experiment's split is re-rounded to such multiples with the same ratios (largest remainder,
    ``data/mixing.py``); the realised split is logged. Raises ConfigError naming the numbers
    when the global batch is not a multiple of ``micro_batch x batch shards``. The ratio
    schedule's phases (``train.task_batch_schedule``) are re-rounded the same way and keep the
    accumulation steps (their totals must be multiples of ``batch shards x accum`` too).
    """
    t = cfg.train
    sizes = {"und": t.und_batch, "gen": t.gen_batch, "text": t.text_batch}
    total = sum(sizes.values())
    shards = platform.batch_shards
    per_micro = platform.micro_batch * shards
    if total % per_micro:
        raise ConfigError(
            f"platform {platform.name}: global batch {total} (und {sizes['und']} + gen {sizes['gen']} "
            f"+ text {sizes['text']}) is not divisible by micro-batch {platform.micro_batch} x "
            f"{shards} batch shards = {per_micro}; pick a global batch that is a multiple of "
            f"{per_micro} or another micro_batch (e.g. --platform FILE:micro_batch=N)")
    accum = total // per_micro
    unit = shards * accum
    train = rounded_task_batches(t, unit, f"platform {platform.name}",
                                 f"{shards} batch shards x {accum} accumulation steps")
    new = {"und": train.und_batch, "gen": train.gen_batch, "text": train.text_batch}
    bad = {k: n for e in ((0,) + tuple(new.values()),) + train.task_batch_schedule
           for k, n in zip(("und", "gen", "text"), e[1:]) if n % platform.hosts}
    if bad:  # each host feeds its own rows (data/pipeline.py::per_process_batch_sizes)
        raise ConfigError(f"platform {platform.name}: task batches {bad} do not split over "
                          f"{platform.hosts} hosts")
    d, f, tp = platform.mesh_shape()
    model = dataclasses.replace(cfg.model, remat=platform.remat, dtype=platform.dtype)
    train = dataclasses.replace(train, mesh=MeshConfig(data=d, fsdp=f, tensor=tp),
                                optim=dataclasses.replace(t.optim, accum_steps=accum))
    out = dataclasses.replace(cfg, model=model, train=train)
    if log is not None:
        changed = "" if new == sizes else (
            f" (re-rounded from {sizes['und']}:{sizes['gen']}:{sizes['text']} to multiples of {unit})")
        log(f"platform {platform.name}: {platform.devices} x {platform.spec.name}, mesh data={d} "
            f"fsdp={f} tensor={tp}; global batch {total} = micro-batch {platform.micro_batch} x "
            f"{shards} batch shards x accum {accum}; und:gen:text {new['und']}:{new['gen']}:"
            f"{new['text']}{changed}; remat {platform.remat}, compute {platform.dtype}")
    return out


def rounded_task_batches(t, unit: int, who: str, why: str):
    """``t`` (TrainConfig) with every per-task batch -- the main one and each entry of
    ``task_batch_schedule`` -- a multiple of ``unit`` rows, same totals and ratios (largest
    remainder, ``data/mixing.py``). Raises ConfigError naming the numbers when a total is not
    a multiple of ``unit``."""
    from janusflow.data.mixing import task_batch_sizes

    def fit(sizes, where):
        total = sum(sizes)
        if all(n % unit == 0 for n in sizes):
            return tuple(sizes)
        try:
            got = task_batch_sizes(sizes, total, multiple_of=unit)
        except ValueError as e:
            raise ConfigError(f"{who}: cannot split the global batch {total}{where} (und:gen:text "
                              f"{sizes[0]}:{sizes[1]}:{sizes[2]}) into multiples of {why} = {unit}: "
                              f"{e}") from None
        return tuple(got[k] for k in ("und", "gen", "text"))

    main = fit((t.und_batch, t.gen_batch, t.text_batch), "")
    schedule = tuple((e[0],) + fit(e[1:], f" of the steps before {e[0]}") for e in t.task_batch_schedule)
    return dataclasses.replace(t, und_batch=main[0], gen_batch=main[1], text_batch=main[2],
                               task_batch_schedule=schedule)


def fit_batches_to_mesh(cfg: ExperimentConfig, batch_shards: int,
                        log: Optional[Callable[[str], None]] = None) -> ExperimentConfig:
    """A plain run (no ``--platform``) on a mesh of ``batch_shards`` data x fsdp shards: task
    batches that do not divide are re-rounded as :func:`apply_platform` does (multiples of
    ``batch_shards x accum_steps``, same totals and ratios), with one line saying so."""
    t = cfg.train
    unit = batch_shards * t.optim.accum_steps
    new = rounded_task_batches(t, unit, "train", f"{batch_shards} batch shards x "
                               f"{t.optim.accum_steps} accumulation steps")
    if new == t:
        return cfg
    if log is not None:
        def show(e):
            return ":".join(str(n) for n in e)
        old = [(0, t.und_batch, t.gen_batch, t.text_batch)] + list(t.task_batch_schedule)
        got = [(0, new.und_batch, new.gen_batch, new.text_batch)] + list(new.task_batch_schedule)
        changes = "; ".join(f"{show(a[1:])} -> {show(b[1:])}" + (f" (steps < {a[0]})" if a[0] else "")
                            for a, b in zip(old[1:] + old[:1], got[1:] + got[:1]) if a != b)
        log(f"train: und:gen:text batches re-rounded to multiples of {unit} ({batch_shards} batch "
            f"shards x accum {t.optim.accum_steps}), as --platform does: {changes}")
    return dataclasses.replace(cfg, train=new)


def export_env(platform: Platform, environ=None, log: Optional[Callable[[str], None]] = None) -> dict:
    """Put the platform's flags into the environment (values already set win: a launcher or
    user may have tuned them). They only take effect if the XLA/TPU runtime has not started
    yet; returns what was set."""
    environ = os.environ if environ is None else environ
    done = {}
    for k, v in platform.env.items():
        if k not in environ:
            environ[k] = v
            done[k] = v
        elif environ[k] != v and log is not None:
            log(f"platform {platform.name}: {k} is already set in the environment; keeping it "
                f"instead of the platform's {v!r}")
    return done


def shell_exports(platform: Platform) -> str:
    """``export NAME='value'`` lines for the launcher."""
    import shlex
    return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in platform.env.items())


def parse_mesh(text: str) -> MeshConfig:
    """``data=1,fsdp=8,tensor=1`` (axes left out are 1; one may be -1)."""
    sizes = {}
    for kv in filter(None, (s.strip() for s in text.split(","))):
        k, eq, v = kv.partition("=")
        if not eq or k not in ("data", "fsdp", "tensor"):
            raise ConfigError(f"--mesh {text!r}: expected data=N,fsdp=N,tensor=N")
        try:
            sizes[k] = int(ast.literal_eval(v))
        except (ValueError, SyntaxError):
            raise ConfigError(f"--mesh {text!r}: {k} must be an int, got {v!r}") from None
    return MeshConfig(**{"data": 1, "fsdp": 1, "tensor": 1, **sizes})
