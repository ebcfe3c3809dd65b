"""``janusflow sweep``: run an experiment file's sweep() members."""

from __future__ import annotations

import sys



def cmd_sweep(args) -> int:
    from janusflow.train import sweep
    path, members = sweep.load_members(args.config)
    members = sweep.select(members, args.only)
    if args.print:
        for line in sweep.launch_commands(path, members, args.workdir, args.set, args.launcher):
            print(line)
        return 0
    from janusflow.configs.loader import apply_overrides, load_config
    for m in members:  # every member's config must load before hours of training start
        apply_overrides(load_config(f"{path}:{m['arg']}"), args.set)
    status = sweep.run(path, members, args.workdir, args.set)
    out = sweep.write_results(path, members, args.workdir, status, command=" ".join(["janusflow"] + sys.argv[1:]))
    print(open(out).read())
    print(f"wrote {out} and learning_curves.png")
    return 0 if all(s == "done" for s in status.values()) else 1


def register(sub) -> None:
    p = sub.add_parser("sweep", help="run (or --print) the members of an experiment file's sweep(); results.md")
    p.add_argument("--config", required=True, help="experiments/<file>.py[:arg] defining sweep(arg)")
    p.add_argument("--workdir", required=True, help="one sub-directory per member; results.md, learning_curves.png")
    p.add_argument("--only", default=None, help="comma-separated member names, e.g. A,F")
    p.add_argument("--print", action="store_true", help="print one launch command per member instead of running")
    p.add_argument("--launcher", default=None,
                   help="with --print: command prefix per member, e.g. 'tpu_configs/launch_tpu.sh NAME ZONE "
                        "PROJECT tpu_configs/v5p_64.py' (then spec, workdir and --set follow)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every member")
    p.set_defaults(func=cmd_sweep)
