"""The benchmark's command line (`jobs/bench.py`, the `benchmarks` package under jobs/): its flags, the
mode registry and the package's shape. Fast: nothing is measured."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
JOBS = ROOT / "jobs"
PKG = JOBS / "benchmarks"

# every flag `jobs/bench.py` has taken so far: scripts and docs use them
FLAGS = ["--quick", "--out", "--no-write", "--sections", "--workdir", "--reps", "--pipeline-reps", "--pipeline-set",
         "--memory-sizes", "--variant", "--load-threshold", "--max-wait", "--gpu", "--gpu-engines", "--gpu-videos",
         "--gpu-output-tokens", "--gpu-hf-batch", "--gpu-vllm-max-num-seqs", "--gpu-dry-cpu", "--soak", "--soak-minutes",
         "--soak-rate", "--_decode-child"]
HEAVY = ("torch", "ray", "av", "numpy", "vllm", "transformers", "psutil", "pipeline", "qwen_vl_utils", "decord")


@pytest.fixture(scope="module")
def modes():
    if str(JOBS) not in sys.path:
        sys.path.insert(0, str(JOBS))
    return importlib.import_module("benchmarks.modes")


def test_help_runs_and_lists_the_modes(modes):
    r = subprocess.run([sys.executable, str(JOBS / "bench.py"), "--help"], capture_output=True, text=True, timeout=120, cwd="/")
    assert r.returncode == 0, r.stderr
    for name in modes.MODES:
        mod = modes.load(name)
        assert f"mode {mod.NAME}" in r.stdout and f"  {mod.NAME} " in r.stdout.split("modes (one per run):")[1]
    for flag in FLAGS[:-1]:
        assert flag in r.stdout
    assert "--_decode-child" not in r.stdout  # internal


def test_every_registered_mode_imports_light_and_has_the_hooks(modes):
    for name in modes.MODES:
        mod = modes.load(name)
        assert isinstance(mod.NAME, str) and isinstance(mod.SUMMARY, str)
        for hook in ("add_arguments", "selected", "run", "report"):
            assert callable(getattr(mod, hook)), (name, hook)
        assert mod.report({"machine": {}, "mode": "quick", "command": []}) == []  # no sections: no lines
    assert sum(bool(getattr(m, "DEFAULT", False)) for m in modes.all_modes()) == 1
    # importing the package (every module) loads none of the heavy libraries: --help and the parser stay cheap
    names = ", ".join(repr(f"benchmarks.{p.stem}") for p in PKG.glob("*.py") if p.stem != "__init__")
    code = (f"import importlib, sys; sys.path[:0] = [{str(ROOT)!r}, {str(JOBS)!r}]\n"
            f"for n in [{names}]: importlib.import_module(n)\n"
            f"print(sorted({{k.split('.')[0] for k in sys.modules}} & set({HEAVY!r})))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_flags_and_mode_choice(modes):
    from benchmarks.cli import build_parser

    ap = build_parser()
    options = {s for a in ap._actions for s in a.option_strings}
    assert set(FLAGS) <= options
    assert modes.choose(ap.parse_args([])).NAME == "cpu"
    assert modes.choose(ap.parse_args(["--quick", "--sections", "decode"])).NAME == "cpu"
    assert modes.choose(ap.parse_args(["--gpu"])).NAME == "gpu"
    assert modes.choose(ap.parse_args(["--gpu-dry-cpu"])).NAME == "gpu"
    assert ap.parse_args(["--_decode-child", "spec.json", "out.json"])._decode_child == ["spec.json", "out.json"]


def test_package_shape():
    """One module per measurement, none over ~600 lines, no import cycles between them."""
    graph: dict[str, set[str]] = {}
    for p in PKG.glob("*.py"):
        src = p.read_text()
        assert len(src.splitlines()) <= 600, p.name
        deps = set()
        for n in ast.walk(ast.parse(src)):
            if isinstance(n, ast.ImportFrom) and n.level == 1:
                deps |= {n.module} if n.module else {a.name for a in n.names}
        graph[p.stem] = deps - {"__init__", "__doc__"}

    seen: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(m: str, path: list[str]) -> None:
        assert seen.get(m) != 1, "import cycle: " + " -> ".join(path + [m])
        if seen.get(m) == 2:
            return
        seen[m] = 1
        for d in graph.get(m, ()):
            visit(d, path + [m])
        seen[m] = 2

    for m in graph:
        visit(m, [])


def test_soak_check_is_growth_over_minute_10_of_per_minute_peaks(modes):
    soak = modes.load("soak")

    def row(t, v, rows=None):
        return {"t_min": t, "rows": t if rows is None else rows, "load1": 0.0, "spilled_total": 0.0, "by_kind": {},
                "by_kind_private": {}, **{k: v for k in soak.SERIES}}

    # six samples a minute; a sawtooth whose peak (103) is the same every minute: flat, whatever the phase
    saw = [row(t / 6, 100.0 + 3 * (t % 6 == 5)) for t in range(0, 61 * 6)]
    c = soak.check(saw)
    assert all(c[k]["pass"] and c[k]["at_10"] == 103.0 for k in soak.CHECKED)
    assert c["ray_rss_sum"]["pass"] is None and not c["ray_rss_sum"]["checked"]  # shown, not checked
    assert len(soak.minutes(saw)) == 61 and soak.minutes(saw)[10]["samples"] == 6
    leak = [row(t, 100.0 + t) for t in range(0, 61)]  # +1 MiB a minute: x1.45 by minute 60
    c = soak.check(leak)
    assert not c["driver_rss"]["pass"] and c["driver_rss"]["max_ratio"] == round(160 / 110, 3)
    # the minutes after the last row (actors leaving) are not growth and not checked
    tail = [row(t, 100.0, rows=min(t, 50)) for t in range(0, 51)] + [row(t, 300.0, rows=50) for t in range(51, 55)]
    assert soak.check(tail)["ray_private_sum"]["pass"]
    assert soak.check([row(t, 100.0) for t in range(0, 9)])["driver_rss"] is None  # shorter than 10 min: no verdict


def test_soak_check_says_how_long_and_which_kind(modes):
    """A FAIL tells a reader a transient from growth: minutes over the bound, and at the worst minute which
    process kinds differ from minute 10 (a worker starting here)."""
    soak = modes.load("soak")

    def row(t, workers):
        kinds = {"decode actors": 500.0, "idle/starting workers": workers}
        return {"t_min": t, "rows": t, "load1": 0.0, "spilled_total": 0.0, "by_kind": {}, "by_kind_private": kinds,
                **{k: 1000.0 for k in soak.SERIES}, "ray_private_sum": sum(kinds.values())}

    runs = [row(t, 440.0 if t == 30 else 120.0) for t in range(0, 61)]
    c = soak.check(runs)["ray_private_sum"]
    assert not c["pass"] and c["minutes_over"] == 1 and c["minutes"] == 50 and c["worst_min"] == 30
    assert c["worst_by_kind_delta"] == {"idle/starting workers": 320.0}
    line = next(l for l in soak.report({"soak": {"rows": 60, "clips": [], "rate": 1, "wall_s": 1, "summary": {},
                                                  "load": {"load_mean": 0}, "series": runs, "check": soak.check(runs)}})
                if l.startswith("- ray_private_sum"))
    assert "1 of 50 later minutes over" in line and "+320 idle/starting workers" in line and line.endswith("**FAIL**")


def test_soak_check_names_the_ray_process_that_grows(modes):
    """Slow growth of one of Ray's own processes (here the GCS, +0.5 MiB a minute) is named with its rate, minute
    10 to the last scoring minute; the teardown minutes after the last row do not count."""
    soak = modes.load("soak")
    procs = modes.load("procs")

    def row(t):
        return {"t_min": t, "rows": min(t, 60), "load1": 0.0, "spilled_total": 0.0, "by_kind": {}, "by_kind_private": {},
                **{k: 1000.0 for k in soak.SERIES},
                "ray_system_private": {"gcs_server": 100.0 + 0.5 * min(t, 60), "raylet": 50.0 if t < 62 else 5.0}}

    c = soak.check([row(t) for t in range(0, 64)])["ray_system_by_process"]
    assert c["gcs_server"] == {"at_10": 105.0, "last": 130.0, "mib_per_hour": 30.0}
    assert c["raylet"]["mib_per_hour"] == 0.0
    line = next(l for l in soak.report({"soak": {"rows": 60, "clips": [], "rate": 1, "wall_s": 1, "summary": {},
                                                  "load": {"load_mean": 0}, "series": [row(t) for t in range(0, 64)],
                                                  "check": soak.check([row(t) for t in range(0, 64)])}})
                if l.startswith("- Ray's own processes"))
    assert "gcs_server 105.0 -> 130.0 (+30)" in line
    # which process: Ray's binaries by name, its Python processes by script, workers by their title
    assert procs._system_name("/x/ray/core/src/ray/raylet/raylet --raylet_socket_name=/tmp/s") == "raylet"
    assert procs._system_name("/x/bin/python -u /x/ray/_private/log_monitor.py --session-dir=/tmp") == "log_monitor.py"
    assert procs._system_name("ray::DashboardAgent") == "DashboardAgent"
