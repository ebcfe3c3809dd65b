"""``janusflow sweep``: run an experiment file's sweep() members over seeds."""

from __future__ import annotations

import os
import sys


def cmd_sweep(args) -> int:
    from janusflow.train import sweep, sweep_report
    path, members = sweep.load_members(args.config)
    members = sweep.select(members, args.only)
    runs = sweep.plan_runs(path, members, args.set, args.seeds)   # every member's config loads first
    if args.print:
        for line in sweep.launch_commands(path, runs, args.workdir, args.launcher):
            print(line)
        return 0
    results = args.results or os.path.join(args.workdir, "results.jsonl")
    claims = sweep.load_claims(args.config)
    status = {}
    if not args.report:
        status = sweep.run(path, runs, args.workdir, results, keep_runs=args.keep_runs)
    summary = sweep.report(path, members, runs, results, command=" ".join(["janusflow"] + sys.argv[1:]),
                           reference=args.reference, claims=claims)
    out = sweep_report.report_paths(results)
    print(open(out["md"]).read())
    print(f"wrote {out['md']}, {out['json']}, {out['members']} and {out['curves']} from {results}")
    for v in summary["verdicts"]:
        print(sweep_report.verdict_line(v, args.reference))
    return 0 if all(s == "done" for s in status.values()) else 1


def register(sub) -> None:
    p = sub.add_parser("sweep", help="run (or --print) the members of an experiment file's sweep() over seeds; "
                                     "results file, table with intervals, verdicts")
    p.add_argument("--config", required=True, help="experiments/<file>.py[:arg] defining sweep(arg)")
    p.add_argument("--workdir", required=True, help="run directories <workdir>/<member>/seed<s> and their logs")
    p.add_argument("--seeds", type=int, default=1,
                   help="seeds per member: seed s adds s to train.seed and data.seed (seed 0 = the config)")
    p.add_argument("--results", default=None, metavar="FILE.jsonl",
                   help="results file, one line per finished member-seed, appended as each ends (default "
                        "<workdir>/results.jsonl); the report is written beside it (FILE.md, FILE_summary.json, "
                        "FILE_members.png, FILE_curves.png)")
    p.add_argument("--keep-runs", action="store_true", help="keep each run's directory after it is recorded")
    p.add_argument("--report", action="store_true", help="only write the report from the results file; train nothing")
    p.add_argument("--reference", default="F", help="the member differences and claims are taken against")
    p.add_argument("--only", default=None, help="comma-separated member names, e.g. A,F")
    p.add_argument("--print", action="store_true", help="print one launch command per member-seed instead of running")
    p.add_argument("--launcher", default=None,
                   help="with --print: command prefix per member, e.g. 'tpu_configs/launch_tpu.sh NAME ZONE "
                        "PROJECT tpu_configs/v5p_64.py' (then spec, workdir and --set follow)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every member")
    p.set_defaults(func=cmd_sweep)
