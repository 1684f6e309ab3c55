"""Arguments and main: the common flags, then each registered mode's flags in a group of its own."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from . import __doc__ as _overview
from .common import ROOT, machine_info
from .modes import all_modes, choose
from .report import ratio_table, write_results


def build_parser() -> argparse.ArgumentParser:
    modes = all_modes()
    epilog = "modes (one per run):\n" + "\n".join(
        f"  {m.NAME:<6} {m.SUMMARY}{' [default]' if getattr(m, 'DEFAULT', False) else ''}" for m in modes)
    ap = argparse.ArgumentParser(description=_overview.split("\n\n")[0], epilog=epilog,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer clips/reps/samples (under 5 min on 2 cores)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results.md"), help="markdown file the results are appended to")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--workdir", default=str(ROOT / "tmp" / "bench"), help="clip cache, shards, outputs")
    ap.add_argument("--load-threshold", type=float, default=1.0, help="wait for the 1-min load to fall below this")
    ap.add_argument("--max-wait", type=float, default=None, help="longest wait for a quiet machine, per section (s; default 600, 0 with --quick)")
    ap.add_argument("--_decode-child", nargs=2, help=argparse.SUPPRESS)  # the decode section's pinned child process
    for m in modes:
        m.add_arguments(ap.add_argument_group(f"mode {m.NAME}", m.SUMMARY))
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args._decode_child:
        from .decode import decode_child

        decode_child(*args._decode_child)
        return 0
    if args.max_wait is None:  # --quick must finish in 5 minutes: it records the load instead of waiting
        args.max_wait = 0.0 if args.quick else 600.0
    mode = choose(args)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RAY_TMPDIR", str(ROOT / "tmp" / "ray"))
    t0 = time.time()
    cmd = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--no-write"]
    res: dict[str, Any] = {"machine": machine_info(), "mode": "quick" if args.quick else "full", "command": cmd}
    res.update(mode.run(args, work))
    res["wall_s"] = time.time() - t0
    print("\n".join(ratio_table(res)))
    print(f"\n[bench] total {res['wall_s']:.0f} s")
    if not args.no_write:
        write_results(Path(args.out), res, res["mode"])
        print(f"[bench] appended to {args.out}")
    return 0
