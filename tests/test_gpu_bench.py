"""`jobs/bench.py --gpu` must run on the GPU image as it is (Python 3.12, torch + CUDA, transformers; no vLLM, Ray,
PyAV or pyarrow): its code path, run on CPU with the tiny model (`--gpu-dry-cpu`), frames from an .npz
(`--gpu-frames`, made on CPU with `--gpu-save-frames`), with those packages made unimportable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ABSENT = ("av", "ray", "vllm", "pyarrow", "decord", "qwen_vl_utils")  # PyYAML and pydantic come with transformers

RUN_WITHOUT = f"""
import sys, runpy, importlib.abc
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {ABSENT!r}:
            raise ImportError(f"{{name}} is not on the GPU image")
        return None
sys.meta_path.insert(0, Absent())
sys.argv = ["jobs/bench.py"] + sys.argv[1:]
runpy.run_path({str(ROOT / "jobs" / "bench.py")!r}, run_name="__main__")
for m in {ABSENT!r}:
    assert m not in sys.modules, m
"""


def test_gpu_mode_runs_without_vllm_ray_pyav(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(4, 56, 84, 3), dtype=np.uint8)
    npz = tmp_path / "frames.npz"
    np.savez_compressed(npz, frames=frames)
    again = tmp_path / "again.npz"
    cmd = [sys.executable, "-c", RUN_WITHOUT, "--gpu-dry-cpu", "--gpu-engines", "transformers", "--gpu-hf-batch", "1",
           "--gpu-frames", str(npz), "--gpu-save-frames", str(again), "--no-write", "--workdir", str(tmp_path / "w")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "| transformers, 1 request at a time (vscore reference engine) |" in r.stdout
    assert "error" not in r.stdout.split("GPU, reference workload")[1]
    assert "[4, 56, 84, 3]" in r.stdout
    with np.load(again) as z:
        np.testing.assert_array_equal(z["frames"], frames)
