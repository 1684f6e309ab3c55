"""`vscore submit CONFIG [overrides] --address http://HEAD:8265`: the scoring job on a Ray cluster."""

from __future__ import annotations

import argparse


def run(a: argparse.Namespace) -> int:
    from pipeline.run.submit import parse_runtime_env_json, submit

    _, code = submit(a.config, a.overrides, address=a.address, working_dir=a.working_dir,
                     runtime_env=parse_runtime_env_json(a.runtime_env_json), python=a.python,
                     follow=not a.no_follow, submission_id=a.submission_id,
                     entrypoint_num_cpus=a.entrypoint_num_cpus)
    return code


def add_parser(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("submit", help="submit `jobs/score.py CONFIG` to a Ray cluster (Jobs API), follow its logs, "
                        "exit with its status (0 succeeded, 1 failed, 2 stopped)")
    sp.add_argument("config", help="YAML config, inside --working-dir (it is uploaded with it)")
    sp.add_argument("overrides", nargs="*", help="dotted.key=value overrides, passed to the job as given")
    sp.add_argument("--address", default=None, help="Ray dashboard URL, e.g. http://HEAD:8265 (default: RAY_ADDRESS)")
    sp.add_argument("--working-dir", default=".", help="checkout to upload as the job's working dir (default: .)")
    sp.add_argument("--runtime-env-json", default=None,
                    help="extra runtime env as JSON (or a file holding it): env_vars/excludes are merged, other keys replace")
    sp.add_argument("--python", default=None,
                    help="interpreter for the entrypoint (default: this one for a loopback address, else `python` of the cluster's image)")
    sp.add_argument("--submission-id", default=None, help="job id to use (default: generated)")
    sp.add_argument("--entrypoint-num-cpus", type=float, default=None, help="CPUs reserved for the driver")
    sp.add_argument("--no-follow", action="store_true", help="print the job id and return without waiting")
    sp.set_defaults(fn=run)
