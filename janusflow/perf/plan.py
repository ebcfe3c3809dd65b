"""``janusflow plan``: compile the real train step for N devices without allocating anything,
and report per-device memory (XLA's buffer assignment), FLOPs per step (XLA cost analysis and
the analytic model count) and the run time at a given MFU on a given chip.

The state and the batch are ``jax.ShapeDtypeStruct``s carrying their shardings (the abstract
state comes from ``train/state.py::state_shardings``, which builds the model under
``eval_shape``), so a 1.3B plan on 32 simulated devices needs only the compiler's memory.
The devices are simulated CPU devices (``--xla_force_host_platform_device_count``), which
must be set before jax starts: :func:`run_cli` re-executes ``janusflow plan`` in a child
process with that flag and checks that the child really got N devices.

With a platform file that names a TPU topology and libtpu installed (``pip install
"janusflow[tpu]"``), the step is compiled by the TPU compiler itself for compile-only TPU
devices (``tpu_topology.py``): its memory plan is what the chip would hold. Otherwise the
plan says in one line that it falls back to the XLA:CPU estimate, and every such report
carries the caveat: XLA:CPU's memory plan only estimates TPU/GPU memory (other fusion
decisions, layouts and padding, no TPU/GPU-specific passes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Callable, Optional

from janusflow.configs.schema import ConfigError, ExperimentConfig

from janusflow.data.step_budget import PAPER_STEPS, format_budget

# Paper Table 1 (shared/spec/JANUSFLOW.md section 4): 10k + 390k + 26k steps.
PAPER_TOTAL_STEPS = sum(PAPER_STEPS.values())          # 426,000

CPU_CAVEAT = ("XLA:CPU memory analysis is an estimate of TPU/GPU memory: fusion, layouts, "
              "padding and the backend's own passes differ on the real chip")
TPU_NOTE = "memory plan of the TPU compiler (libtpu), compiled for compile-only TPU devices"
CHILD_ENV = "JANUSFLOW_PLAN_CHILD"
GiB = 2**30


# ----------------------------------------------------------------------------- batch
def abstract_batch(cfg: ExperimentConfig) -> dict:
    """ShapeDtypeStructs of the global batch the data pipeline feeds this experiment.

    Keys, dtypes and image shapes come from ``train/synthetic.py`` (the layout the step is
    tested with); the sequence lengths and the optional inputs follow ``data/pipeline.py``:
    und rows of ``min(seq_len, 2 + num_und_tokens + und_text_len)``, gen prompts of
    ``prompt_len``, text rows of ``text_len``; SigLIP pixels / VAE images / REPA pixels only
    where the pipeline produces them."""
    import dataclasses

    import jax

    from janusflow.data.pipeline import task_outputs, und_row_len
    from janusflow.train.synthetic import synthetic_batch

    m, t, d = cfg.model, cfg.train, cfg.data
    one = dataclasses.replace(cfg, train=dataclasses.replace(
        t, und_batch=min(t.und_batch, 1), gen_batch=min(t.gen_batch, 1), text_batch=min(t.text_batch, 1)))
    example = synthetic_batch(one, prompt_len=d.prompt_len, text_len=d.text_len)
    outputs = task_outputs(cfg, d)
    drop = {"und": set() if outputs["und_pixels"] else {"pixels"},
            "gen": set() if outputs["repa"] else {"repa_pixels"}}
    if not outputs["und_vae"]:
        drop["und"] |= {"vae_images"}
    seq = {"und": und_row_len(cfg), "gen": d.prompt_len, "text": d.text_len}
    rows = {"und": t.und_batch, "gen": t.gen_batch, "text": t.text_batch}
    out = {}
    for task, arrays in example.items():
        sub = {}
        for k, a in arrays.items():
            if k in drop.get(task, ()):
                continue
            shape = (rows[task],) + ((seq[task],) if a.ndim == 2 else tuple(a.shape[1:]))
            sub[k] = jax.ShapeDtypeStruct(shape, a.dtype)
        out[task] = sub
    return out


# ----------------------------------------------------------------------------- compile
def _bytes_per_device(tree) -> int:
    """Sum over leaves of one device's shard (ShapeDtypeStructs with NamedShardings)."""
    import math

    import jax
    total = 0
    for leaf in jax.tree.leaves(tree):
        shard = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        total += math.prod(shard) * leaf.dtype.itemsize
    return total


# Compiler options of every plan compile (nothing compiled here is ever run):
# - xla_disable_hlo_passes=cse_barrier_expander: XLA:CPU removes the optimization barriers that
#   jax.checkpoint puts around recomputed values and then CSE merges the recomputation with the
#   forward pass, so remat would not show at all (a toy 8-layer MLP: 368 MiB temporaries with
#   or without jax.checkpoint; 88 MiB with remat once the barriers stay, as on TPU). Keeping
#   them makes the CPU plan reflect ModelConfig.remat.
# - xla_backend_optimization_level=0: LLVM optimisation of the CPU kernels changes neither the
#   buffer assignment nor the cost analysis (identical numbers for the tiny step) but takes
#   about half of the compile time.
PLAN_COMPILER_OPTIONS = {"xla_disable_hlo_passes": "cse_barrier_expander",
                         "xla_backend_optimization_level": 0}


def lower_train_step(cfg: ExperimentConfig, devices=None):
    """(lowered step, abstract state, abstract batch, mesh): ``cfg``'s train step lowered from
    abstract inputs for ``devices`` (default: all jax devices; mesh from ``cfg.train.mesh``)."""
    import jax

    from janusflow.parallel.mesh import make_mesh
    from janusflow.train.state import state_shardings
    from janusflow.train.step import batch_shardings, jit_train_step

    mesh = make_mesh(cfg.train.mesh, devices)
    parts, abstract, shardings = state_shardings(cfg, mesh)
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    batch = abstract_batch(cfg)
    batch = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                         batch, batch_shardings(mesh, batch))
    step = jit_train_step(cfg, parts, shardings, mesh, batch)
    return step.lower(state, batch), state, batch, mesh


def compile_plan(cfg: ExperimentConfig, log: Callable[[str], None] = print,
                 compiler_options: Optional[dict] = None, devices=None) -> dict:
    """Lower and compile ``cfg``'s train step on ``devices`` (default: all current jax
    devices; compile-only TPU devices from ``tpu_topology`` work too) from abstract inputs;
    per-device memory and FLOPs. The executable is never run. ``compiler_options``: default
    PLAN_COMPILER_OPTIONS on CPU, none on TPU."""
    import jax

    from janusflow.perf import flops

    t0 = time.perf_counter()
    lowered, state, batch, mesh = lower_train_step(cfg, devices)
    n_dev = mesh.devices.size
    device = mesh.devices.flat[0]
    t_lower = time.perf_counter() - t0
    log(f"lowered in {t_lower:.0f}s; compiling for {n_dev} {device.device_kind} devices ...")
    t1 = time.perf_counter()
    if compiler_options is None:
        compiler_options = PLAN_COMPILER_OPTIONS if device.platform == "cpu" else {}
    opts = compiler_options
    compiled = lowered.compile(compiler_options=opts) if opts else lowered.compile()
    t_compile = time.perf_counter() - t1
    log(f"compiled in {t_compile:.0f}s")

    mem = compiled.memory_analysis()
    # Pallas kernels (splash attention) compile to Mosaic custom calls: the plan shows they are in
    hlo = compiled.as_text() or ""
    mosaic = hlo.count('custom_call_target="tpu_custom_call"')
    memory = {k: int(getattr(mem, k + "_size_in_bytes", 0) or 0)
              for k in ("argument", "output", "alias", "temp", "generated_code")}
    # Donated state: the outputs reuse the argument buffers (alias), so live memory is
    # arguments + outputs - aliased + temporaries (+ the executable itself).
    memory["total"] = (memory["argument"] + memory["output"] - memory["alias"] + memory["temp"]
                       + memory["generated_code"])
    state_parts = {k: _bytes_per_device(getattr(state, k)) for k in state._fields
                   if getattr(state, k) is not None}
    memory["state_breakdown"] = state_parts
    memory["state"] = sum(state_parts.values())
    memory["batch"] = _bytes_per_device(batch)

    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    xla_dev = float((cost or {}).get("flops", 0.0)) or None
    accum = cfg.train.optim.accum_steps
    analytic = flops.train_step_flops(cfg, batch)
    vae = getattr(flops, "train_step_vae_encode_flops", None)
    vae_flops = float(vae(cfg, batch)) if vae else None
    n_examples = sum(next(iter(b.values())).shape[0] for b in batch.values())
    return {
        "experiment": cfg.name, "stage": cfg.train.stage, "devices": n_dev,
        "device_kind": device.device_kind, "compiler": "tpu" if device.platform == "tpu" else "cpu",
        "mesh": {k: int(v) for k, v in mesh.shape.items()},
        "global_batch": n_examples,
        "task_batch": {k: next(iter(b.values())).shape[0] for k, b in batch.items()},
        "accum_steps": accum,
        "micro_batch_per_shard": n_examples // (accum * mesh.shape["data"] * mesh.shape["fsdp"]),
        "remat": cfg.model.remat, "dtype": cfg.model.dtype,
        "attention_impl": cfg.model.attention_impl, "mosaic_kernels": mosaic,
        "lower_s": t_lower, "compile_s": t_compile,
        "memory_per_device": memory,
        # SPMD: cost analysis describes one device's program. With accumulation the micro-step
        # is the body of a while loop, which XLA counts once: x accum approximates the step
        # (the optimizer update outside the loop is then over-counted, a small share).
        "xla_flops_per_device_program": xla_dev,
        "xla_flops_per_step": xla_dev * n_dev * accum if xla_dev else None,
        "xla_flops_comparable": not cfg.model.scan_layers,
        "xla_flops_note": ("per-device program x devices" + (f" x accum {accum} (loop body counted "
                           "once by XLA)" if accum > 1 else "")
                           # the layer scan is a loop too: XLA counts one layer of each tower
                           + ("; SCANNED LAYERS: one layer per tower counted, not comparable to the "
                              "analytic count (--flops-by-depth for the ratio)"
                              if cfg.model.scan_layers else "")),
        "model_flops_per_step": analytic["total"], "model_flops_breakdown": analytic,
        "vae_encode_flops_per_step": vae_flops,
        "budget": format_budget(cfg),
    }


def time_estimate(model_flops_per_step: float, devices: int, peak_per_device: float,
                  mfu: float, steps: int) -> dict:
    """Step time at ``mfu`` of ``devices x peak`` and the wall time of ``steps`` steps."""
    if not 0 < mfu <= 1:
        raise ConfigError(f"--mfu must be in (0, 1], got {mfu}")
    step_s = model_flops_per_step / (devices * peak_per_device * mfu)
    return {"mfu": mfu, "peak_flops_per_device": peak_per_device, "step_s": step_s,
            "steps_per_s": 1.0 / step_s, "steps": steps, "days": steps * step_s / 86400}


# ----------------------------------------------------------------------------- report
def _gib(x) -> str:
    return f"{x / GiB:.2f} GiB" if x >= GiB / 4 else f"{x / 2**20:.2f} MiB"


def _flop(x) -> str:
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if x >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x / 1e6:.2f} MFLOP"


def format_report(r: dict) -> str:
    m = r["memory_per_device"]
    mesh = " ".join(f"{k}={v}" for k, v in r["mesh"].items())
    tb = r["task_batch"]
    lines = [
        f"plan: {r['experiment']} (stage {r['stage']}) on {r['devices']} "
        f"{'compile-only' if r.get('compiler') == 'tpu' else 'simulated'} {r['device_kind']} "
        f"devices{' (' + r['topology'] + ')' if r.get('topology') else ''}, mesh {mesh}",
        f"  global batch {r['global_batch']} ({', '.join(f'{k} {v}' for k, v in tb.items())}) = "
        f"micro-batch {r['micro_batch_per_shard']} per batch shard x "
        f"{r['mesh']['data'] * r['mesh']['fsdp']} shards x accum {r['accum_steps']}; "
        f"remat {r['remat']}, compute {r['dtype']}, attention {r.get('attention_impl', 'xla')}"
        + (f" ({r['mosaic_kernels']} Mosaic kernel calls in the compiled step)"
           if r.get("mosaic_kernels") else ""),
        "  examples and tokens per step (rows padded, not packed; paper: packed 4096-token sequences)",
        *r.get("budget", []),
        f"  lower {r['lower_s']:.0f}s, compile {r['compile_s']:.0f}s",
        "",
        f"  per-device memory ({'TPU compiler' if r.get('compiler') == 'tpu' else 'XLA:CPU'} buffer assignment)",
        f"    arguments        {_gib(m['argument']):>12}   (state {_gib(m['state'])}: "
        + ", ".join(f"{k} {_gib(v)}" for k, v in m["state_breakdown"].items() if v >= 1024)
        + f"; batch {_gib(m['batch'])})",
        f"    outputs          {_gib(m['output']):>12}",
        f"    aliased (donated){_gib(m['alias']):>12}",
        f"    temporaries      {_gib(m['temp']):>12}",
        f"    generated code   {_gib(m['generated_code']):>12}",
        f"    total            {_gib(m['total']):>12}   = arguments + outputs - aliased + temporaries + code",
    ]
    if r.get("platform"):
        p = r["platform"]
        fits = "fits" if m["total"] <= p["hbm_bytes"] else "DOES NOT FIT"
        lines.append(f"    {p['chip']} memory {p['hbm_bytes'] / 1e9:.0f} GB per device: {fits} "
                     f"({100 * m['total'] / p['hbm_bytes']:.0f}%)")
    bd = r["model_flops_breakdown"]
    lines += [
        "",
        "  FLOPs per step",
        f"    analytic model    {_flop(r['model_flops_per_step']):>12}   ("
        + ", ".join(f"{k} {_flop(v)}" for k, v in bd.items() if k != "total" and v) + ")",
    ]
    if r["xla_flops_per_step"]:
        lines.append(f"    XLA cost analysis {_flop(r['xla_flops_per_step']):>12}   "
                     f"({r['xla_flops_note']}"
                     + (f"; ratio to analytic {r['xla_flops_per_step'] / r['model_flops_per_step']:.2f})"
                        if r.get("xla_flops_comparable", True) else ")"))
    if r.get("xla_flops_by_depth"):
        d = r["xla_flops_by_depth"]
        lines.append(f"    XLA by depth      {_flop(d['xla_flops_per_step']):>12}   ({d['method']}; "
                     f"ratio to analytic {d['ratio']:.2f}; the analytic count extrapolated the same way: "
                     f"{_flop(d['model_flops_per_step_extrapolated'])})")
    if r.get("vae_encode_flops_per_step"):
        lines.append(f"    + frozen VAE encode {_flop(r['vae_encode_flops_per_step'])} "
                     "(not model FLOPs; precomputed latents remove it)")
    if r.get("time"):
        t = r["time"]
        lines += ["",
                  f"  time at {100 * t['mfu']:.0f}% MFU of {r['devices']} x {t['peak_flops_per_device'] / 1e12:.0f} "
                  f"TFLOP/s ({t['chip']}):",
                  f"    {t['step_s']:.3g} s/step, {t['steps_per_s']:.3g} steps/s; "
                  f"{t['steps']:,} steps: {t['days']:.3g} days"]
        if t.get("stage_steps"):
            lines.append(f"    this stage's {t['stage_steps']:,} steps: {t['stage_days']:.3g} days")
    lines += ["", f"  note: {TPU_NOTE if r.get('compiler') == 'tpu' else CPU_CAVEAT}"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI
def prepare_config(cfg: ExperimentConfig, *, platform=None, mesh=None, batch: Optional[int] = None,
                   log=print) -> ExperimentConfig:
    """--batch (same task ratios, new global batch), then the platform, then --mesh."""
    import dataclasses

    from janusflow.data.mixing import with_task_ratios
    from janusflow.perf.platforms import apply_platform
    t = cfg.train
    if batch is not None:
        try:
            cfg = with_task_ratios(cfg, (t.und_batch, t.gen_batch, t.text_batch), batch)
        except ValueError as e:
            raise ConfigError(f"--batch {batch}: {e}") from None
    if platform is not None:
        cfg = apply_platform(cfg, platform, log=log)
    if mesh is not None:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, mesh=mesh))
    return cfg


def child_command(args) -> list:
    """The ``janusflow plan`` command line the child process runs (from parsed args)."""
    cmd = [sys.executable, "-m", "janusflow.cli", "plan", "--config", args.config,
           "--devices", str(args.devices)]
    for s in args.set:
        cmd += ["--set", s]
    for flag, v in (("--mesh", args.mesh), ("--platform", args.platform), ("--batch", args.batch),
                    ("--json", args.json), ("--mfu", args.mfu), ("--steps", args.steps),
                    ("--chip", args.chip), ("--compiler", getattr(args, "compiler", None))):
        if v is not None:
            cmd += [flag, str(v)]
    if getattr(args, "flops_by_depth", False):
        cmd.append("--flops-by-depth")
    return cmd


def child_env(devices: int, environ=None) -> dict:
    """The parent's environment with exactly ``devices`` simulated CPU devices."""
    env = dict(os.environ if environ is None else environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    flags.append(f"--xla_force_host_platform_device_count={devices}")
    env["XLA_FLAGS"] = " ".join(flags)
    env["JAX_PLATFORMS"] = "cpu"
    env[CHILD_ENV] = "1"
    return env


def choose_compiler(wanted: Optional[str], platform, log=None) -> str:
    """"tpu" or "cpu" for ``--compiler auto|tpu|cpu`` (None = auto): the TPU compiler when the
    platform names a TPU topology and libtpu is installed. ``log`` gets the one-line notice
    when auto falls back to the XLA:CPU estimate."""
    from janusflow.perf.tpu_topology import libtpu_version
    wanted = wanted or "auto"
    if wanted not in ("auto", "tpu", "cpu"):
        raise ConfigError(f"--compiler {wanted!r}: expected auto, tpu or cpu")
    if wanted == "cpu":
        return "cpu"
    why = None
    if platform is None or not platform.topology:
        why = (f"platform {platform.name} names no TPU topology" if platform is not None
               else "no --platform with a TPU topology")
    elif libtpu_version() is None:
        why = "libtpu is not installed (pip install 'janusflow[tpu]')"
    if why is None:
        return "tpu"
    if wanted == "tpu":
        raise ConfigError(f"--compiler tpu: {why}")
    if log is not None:
        log(f"janusflow plan: {why}: falling back to the XLA:CPU estimate")
    return "cpu"


def run_cli(args, log=print) -> int:
    """``janusflow plan``: in the parent, validate and start the child with N simulated
    devices; in the child, compile and report."""
    from janusflow.configs.loader import apply_overrides, load_config
    from janusflow.perf.platforms import CHIPS, load_platform, parse_mesh

    platform = load_platform(args.platform) if args.platform else None
    mesh = parse_mesh(args.mesh) if args.mesh else None
    devices = args.devices or (platform.devices if platform else None)
    if not devices:
        raise ConfigError("janusflow plan: give --devices N (or a --platform)")
    if devices < 1:
        raise ConfigError(f"--devices must be >= 1, got {devices}")
    args.devices = devices
    in_child = os.environ.get(CHILD_ENV) == "1"
    args.compiler = choose_compiler(getattr(args, "compiler", None), platform,
                                    log=log if not in_child else None)
    if args.compiler == "tpu" and devices != platform.devices:
        raise ConfigError(f"--devices {devices}: the TPU compiler plans the platform's topology "
                          f"{platform.topology} ({platform.devices} devices); use --compiler cpu")
    cfg = apply_overrides(load_config(args.config), args.set)
    cfg = prepare_config(cfg, platform=platform, mesh=mesh, batch=args.batch,
                         log=log if not in_child else (lambda _m: None))
    from janusflow.parallel.mesh import resolve_shape
    resolve_shape(cfg.train.mesh, devices)    # a mesh that cannot fit fails here, not after minutes

    if not in_child:
        if args.compiler == "tpu":
            log(f"starting a child process to compile for {platform.topology} with the TPU compiler ...")
            env = child_env(1)
            from janusflow.perf.platforms import export_env
            export_env(platform, env)          # LIBTPU_INIT_ARGS shape what the compiler does
            # libtpu takes /tmp/libtpu_lockfile, one process per machine, as it would own the
            # chips; a compile-only plan owns none, so plans may run beside each other (and
            # beside a training run on a TPU VM)
            env.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
        else:
            log(f"starting a child process with {devices} simulated CPU devices ...")
            env = child_env(devices)
        proc = subprocess.run(child_command(args), env=env)
        return proc.returncode

    import jax
    tpu_devices = None
    if args.compiler == "tpu":
        from janusflow.perf.tpu_topology import topology_devices
        tpu_devices = topology_devices(platform)
    else:
        got, kind = jax.device_count(), jax.devices()[0].platform
        if got != devices or kind != "cpu":
            print(f"janusflow plan: error: needed {devices} simulated CPU devices but jax has {got} "
                  f"{kind} device(s) (XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}); jax may have "
                  "been initialised before the flag was set", file=sys.stderr)
            return 1
    result = compile_plan(cfg, log=log, devices=tpu_devices)
    if getattr(args, "flops_by_depth", False):
        if cfg.model.scan_layers:
            from janusflow.perf.depth_flops import depth_flops

            def compile_one(probe):
                jax.clear_caches()      # one probe's executable at a time in host memory
                return compile_plan(probe, log=log, devices=tpu_devices)
            result["xla_flops_by_depth"] = depth_flops(cfg, compile_one, result["model_flops_breakdown"], log=log)
        else:
            log("--flops-by-depth: the layers are unrolled, so the step's own XLA count is comparable; "
                "no probes compiled")
    if tpu_devices is not None:
        from janusflow.perf.tpu_topology import libtpu_version
        result.update(topology=platform.topology, libtpu=libtpu_version())
    chip_key = args.chip or (platform.chip if platform else None)
    if platform:
        result["platform"] = {"name": platform.name, "chip": platform.spec.name,
                              "hbm_bytes": platform.spec.hbm_bytes, "source": platform.spec.source,
                              "env": platform.env}
    if chip_key:
        if chip_key not in CHIPS:
            raise ConfigError(f"--chip {chip_key!r}: known chips {sorted(CHIPS)}")
        chip = CHIPS[chip_key]
        steps = args.steps or PAPER_TOTAL_STEPS
        est = time_estimate(result["model_flops_per_step"], devices, chip.peak_flops, args.mfu or 0.5, steps)
        est.update(chip=chip.name, peak_source=chip.source)
        stage_steps = cfg.train.steps
        est.update(stage_steps=stage_steps, stage_days=stage_steps * est["step_s"] / 86400)
        result["time"] = est
    log(format_report(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2, default=str)
        log(f"wrote {args.json}")
    return 0
