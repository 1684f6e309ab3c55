"""vscore benchmark (not a test): the entry point of the `benchmarks` package next to this file (see
jobs/benchmarks/__init__.py for what is measured and how, jobs/benchmarks/modes.py for adding a mode).

    python jobs/bench.py --quick                 # < 5 min on 2 cores; prints the ratio table
    python jobs/bench.py                         # the full run (more clips, reps, 1k/10k memory runs)
    python jobs/bench.py --gpu                   # GPU engines (random-init full-size Qwen2.5-VL-7B); needs CUDA

The decode section re-runs this file as its pinned child process (`--_decode-child SPEC OUT`).
"""

import sys
from pathlib import Path

_JOBS = Path(__file__).resolve().parent
for _p in (str(_JOBS.parent), str(_JOBS)):  # the repository (the `pipeline` package), then jobs/ (`benchmarks`)
    if _p not in sys.path:
        sys.path.insert(0, _p)

from benchmarks.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
