"""``janusflow plan``: compile the train step for N simulated devices."""

from __future__ import annotations

from janusflow.cli.common import add_config_args


def cmd_plan(args) -> int:
    from janusflow.perf.plan import run_cli
    return run_cli(args)


def register(sub) -> None:
    p = sub.add_parser("plan", help="compile the train step for N simulated devices: per-device memory, "
                       "FLOPs, time at an MFU (nothing is allocated)")
    add_config_args(p)
    p.add_argument("--devices", type=int, default=None, help="simulated devices (default: the platform's)")
    p.add_argument("--mesh", default=None, metavar="data=1,fsdp=8,tensor=1", help="mesh (after --platform)")
    p.add_argument("--platform", default=None, metavar="FILE[:k=v,...]", help="tpu_configs/<name>.py")
    p.add_argument("--batch", type=int, default=None, help="global batch (same und:gen:text ratios)")
    p.add_argument("--chip", default=None, help="peak FLOP/s for the time estimate: v4|v5e|v5p|h100|a100|a100_40|l4 "
                   "(default: the platform's)")
    p.add_argument("--mfu", type=float, default=None, help="model FLOPs utilisation for the estimate (0.5)")
    p.add_argument("--steps", type=int, default=None, help="steps to time (default: 426,000, paper stages 1-3)")
    p.add_argument("--json", default=None, metavar="OUT.json", help="write the numbers as JSON")
    p.add_argument("--compiler", default="auto", choices=("auto", "tpu", "cpu"),
                   help="tpu: the TPU compiler for the platform's topology (needs libtpu: pip install "
                   "'janusflow[tpu]'); cpu: the XLA:CPU estimate; auto: tpu when possible")
    p.add_argument("--flops-by-depth", action="store_true",
                   help="with scanned layers (XLA counts a loop body once): also compile the step unrolled at "
                   "1-2 LLM layers x 1-2 SigLIP blocks and extrapolate XLA's FLOPs to the full depth, "
                   "for the XLA/analytic ratio")
    p.set_defaults(func=cmd_plan)
