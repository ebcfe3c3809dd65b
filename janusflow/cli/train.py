"""``janusflow train``: train (or resume) an experiment in a workdir."""

from __future__ import annotations

import sys

from janusflow.cli.common import add_config_args, load_config_args

# a recipe stopped before its end (e.g. SIGTERM), to be resumed: sysexits' EX_TEMPFAIL ("try
# again"), so a sweep or a scheduler sees it unfinished, not failed with an error
STOPPED_EXIT = 75


def cmd_train(args) -> int:
    cfg = load_config_args(args)
    if args.vae:  # the pretrained VAE, as --set train.vae_from=DIR
        from janusflow.configs.schema import replace
        cfg = replace(cfg, train=replace(cfg.train, vae_from=args.vae))
    if getattr(args, "platform", None):  # mesh, remat, dtype, accumulation, runtime flags
        from janusflow.perf.platforms import apply_platform, export_env, load_platform
        platform = load_platform(args.platform)
        cfg = apply_platform(cfg, platform, log=print)
        export_env(platform, log=print)  # before jax starts its backend (train() is the first to use it)
    from janusflow.train.loop import init_distributed
    # before any other jax call; a multi-process launch names the coordinator and this process
    # here or in the environment (parallel/mesh.py)
    init_distributed(coordinator=args.coordinator, num_processes=args.num_processes, process_id=args.process_id)
    if cfg.recipe.enabled:  # the multi-phase default run (train/recipe.py)
        from janusflow.train.recipe import PhaseStopped, run
        try:
            run(cfg, args.workdir, start_over=args.start_over)
        except PhaseStopped as e:   # stopped by a signal, resumable: said in one line, not an error
            print(f"janusflow train: {e}", file=sys.stderr)
            return STOPPED_EXIT
    else:
        from janusflow.train.loop import train
        train(cfg, args.workdir, start_over=args.start_over)
    return 0


def register(sub) -> None:
    p = sub.add_parser("train", help="train (or resume) an experiment in --workdir")
    add_config_args(p)
    p.add_argument("--workdir", required=True, help="checkpoints, metrics, samples; resumed if it holds a run (a recipe stopped by "
                   "SIGTERM/SIGINT exits with 75 and resumes with the same command)")
    p.add_argument("--platform", default=None, metavar="FILE[:k=v,...]",
                   help="tpu_configs/<name>.py: mesh, micro-batch (sets accumulation), remat, dtype, flags")
    p.add_argument("--start-over", action="store_true",
                   help="when no checkpoint in --workdir restores, move them aside and train from step 0 "
                        "(default: refuse)")
    p.add_argument("--vae", metavar="DIR", default=None,
                   help="pretrained diffusers AutoencoderKL dir (the SDXL-VAE) for the state: train.vae_from")
    p.add_argument("--coordinator", metavar="HOST:PORT", default=None,
                   help="multi-process: process 0's address (else $JANUSFLOW_COORDINATOR / $JAX_COORDINATOR_ADDRESS)")
    p.add_argument("--num-processes", type=int, default=None, help="multi-process: process count "
                   "(else $JANUSFLOW_NUM_PROCESSES / $JAX_NUM_PROCESSES)")
    p.add_argument("--process-id", type=int, default=None, help="multi-process: this process's index "
                   "(else $JANUSFLOW_PROCESS_ID / $JAX_PROCESS_ID)")
    p.set_defaults(func=cmd_train)
