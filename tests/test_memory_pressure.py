"""Memory pressure for real (issue 16, item 3): 30 s 1080p clips (real H.264, PyAV) whose kept frames at the
default frame budget (60 frames at 1008x560, 97 MiB per clip) are several times the object store of the run's
own local Ray (`ray.object_store_memory` 160 MiB): the run must complete with every row ok exactly once, with
blocks really spilled to disk (Ray's own spill counters, `pipeline.dev.ray_memory.store_stats`, the numbers
behind `ray memory --stats-only`), and the decode actor's peak RSS within the documented bound
(`DecodeConfig.memory`: ~0.6 GiB + 2 x batch_size x one clip's frame bytes).

The second case also SIGKILLs the decode actor once mid-run, as Ray's memory monitor does to a worker over
the node's memory threshold: Ray Data restarts the actor and retries its batch (its actor pools run with
`max_restarts=-1, max_task_retries=-1`), so every row still ends exactly once. (The monitor itself is not
triggered here: its threshold is a fraction of the whole machine's memory, shared with other processes.)

Each case runs a driver of its own (a subprocess with its own Ray), so the small object store does not touch
the session's `ray_local`. Heavy: about 1-2 minutes per case on 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from pipeline.config import DecodeConfig

REPO = Path(__file__).resolve().parents[1]
FIXED = "pipeline.engines.fixed:FixedOutputEngine"
CLIPS, COPIES = 2, 3  # 6 rows: 6 x 97 MiB of frames through a 160 MiB object store
STORE = 160 * 2**20
FRAME_BYTES = 60 * 560 * 1008 * 3  # one 30 s clip's kept frames at the default budget (fps 2, max_pixels)

pytestmark = [pytest.mark.slow, pytest.mark.heavy]

_DRIVER = r"""
import json, os, signal, sys, threading, time
import psutil
from pipeline.config import load_config
from pipeline.dev.ray_memory import store_stats
from pipeline.run.job import init_ray, run

cfg = load_config(None, [], base=json.loads(sys.argv[1]))
kill_once = sys.argv[2] == "1"
init_ray(cfg)
me = psutil.Process()
peak = {"decode_rss": 0, "spilled": 0, "fallback": 0, "store_used": 0, "restored": 0}
killed = []
stop = threading.Event()

def decode_actors():
    out = []
    for p in me.children(recursive=True):
        try:
            if "DecodeStage" in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:
            pass
    return out

def watch():
    while not stop.wait(0.2):
        for p in decode_actors():
            try:
                rss = p.memory_info().rss
            except psutil.Error:
                continue
            peak["decode_rss"] = max(peak["decode_rss"], rss)
            # the memory monitor's kill: SIGKILL to the worker, once, after it has produced a block or two
            if kill_once and not killed and rss > 300 * 2**20 and peak["spilled"] > 0:
                os.kill(p.pid, signal.SIGKILL)
                killed.append(p.pid)
        try:
            s = store_stats()
        except Exception:
            continue
        for k in ("spilled", "fallback", "restored"):
            peak[k] = max(peak[k], s[k])
        peak["store_used"] = max(peak["store_used"], s["used"])

t = threading.Thread(target=watch, daemon=True)
t.start()
summary = run(cfg, progress_every_s=3600)
stop.set()
t.join()
s = store_stats()
peak.update(spilled=max(peak["spilled"], s["spilled"]), spilled_objects=s["spilled_objects"], restored=max(peak["restored"], s["restored"]))
print("RESULT " + json.dumps({"summary": summary, "peak": peak, "killed": killed}))
"""


@pytest.fixture(scope="module")
def big_manifest(tmp_path_factory) -> Path:
    """2 distinct 30 s 1920x1080 H.264 clips (8 fps: the frame budget keeps 60 of 240), each copied 3 times
    (distinct files: one manifest block rejects a second row of the same URL)."""
    d = tmp_path_factory.mktemp("big1080")
    rows = []
    for c in range(CLIPS):
        data = _clip(c)
        for k in range(COPIES):
            p = d / f"clip{c}-{k}.mp4"
            p.write_bytes(data)
            rows.append({"video": str(p), "prompt": f"clip {c} copy {k}"})
    man = d / "manifest.jsonl"
    man.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return man


def _clip(c: int) -> bytes:
    """A 30 s 1920x1080 8 fps H.264 clip (x264 ultrafast) of tests.media's synthetic pattern, started `c` x 100
    frames in, so clips differ."""
    from tests.media import encode_video

    return encode_video(1920, 1080, 8, nframes=240, options={"preset": "ultrafast"}, first_frame=100 * c)


def _run(manifest: Path, out: Path, batch_size: int, kill_once: bool) -> dict:
    base = {"input": {"manifest": str(manifest)},
            "decode": {"actors": 1, "num_cpus": 1, "batch_size": batch_size},
            "engine": {"kind": FIXED, "actors": 1, "num_gpus": 0, "num_cpus": 0.1, "batch_size": 1,
                       "engine_kwargs": {"sleep_s": 1.0}},  # a slow consumer: decoded blocks queue up in the store
            "output": {"path": str(out), "min_rows_per_file": 1},
            "ray": {"num_cpus": 2, "object_store_memory": STORE, "progress_bars": False}}
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": tempfile.mkdtemp(prefix="vsmem", dir="/tmp"),
           "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    p = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(base), "1" if kill_once else "0"], cwd=str(REPO),
                       env=env, capture_output=True, text=True, timeout=900)
    line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert p.returncode == 0 and line, f"driver failed (rc {p.returncode}): {p.stderr[-3000:]}"
    return json.loads(line[7:])


@pytest.mark.parametrize("batch_size,kill_once", [(1, False), (2, True)], ids=["batch1", "batch2-decode-killed"])
def test_frames_beyond_object_store_spill_and_complete_once(big_manifest, tmp_path, batch_size, kill_once):
    res = _run(big_manifest, tmp_path / "out", batch_size, kill_once)
    s, peak = res["summary"], res["peak"]
    n = CLIPS * COPIES
    print(f"[memory] batch_size {batch_size}: decode actor peak RSS {peak['decode_rss'] / 2**20:.0f} MiB, spilled "
          f"{peak['spilled'] / 2**20:.0f} MiB ({peak.get('spilled_objects')} objects), restored {peak['restored'] / 2**20:.0f} MiB, "
          f"fallback {peak['fallback'] / 2**20:.0f} MiB, store peak {peak['store_used'] / 2**20:.0f} MiB, killed {res['killed']}, "
          f"wall {s['wall_s']} s")
    assert s["rows_out"] == n and s["ok"] == n and s["errors"] == 0, s
    rows = pads.dataset(str(tmp_path / "out"), format="parquet").to_table(columns=["row_id", "status", "num_frames", "width", "height"]).to_pylist()
    ids = [r["row_id"] for r in rows]
    assert len(ids) == n and len(set(ids)) == n, "every row exactly once"
    assert all(r["status"] == "ok" and r["num_frames"] == 60 and (r["width"], r["height"]) == (1008, 560) for r in rows), rows
    # the frames really went through a store too small for them: Ray spilled primary copies to disk
    assert n * FRAME_BYTES > 3 * STORE
    assert peak["spilled"] > 0, peak
    # the decode actor's memory follows the batch: ~0.6 GiB + 2 x batch_size x one clip's frames (DecodeConfig.memory),
    # which the default reservation covers for batch_size 8 of these clips
    bound = int(0.6 * 2**30) + 2 * batch_size * FRAME_BYTES
    assert int(0.6 * 2**30) + 2 * 8 * FRAME_BYTES <= DecodeConfig().memory
    assert 0 < peak["decode_rss"] <= bound, (peak["decode_rss"], bound)
    if kill_once:
        assert len(res["killed"]) == 1, "the decode actor was killed once mid-run"
