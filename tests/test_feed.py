"""`jobs/bench.py --feed` (jobs/benchmarks/feed.py): its CPU accounting and its report. Fast: no engine is built
(the measurement itself is a benchmark run, recorded in docs/performance.md)."""

from __future__ import annotations

import importlib
import sys
import threading
import time
from pathlib import Path

import pytest

JOBS = Path(__file__).resolve().parent.parent / "jobs"


@pytest.fixture(scope="module")
def feed():
    if str(JOBS) not in sys.path:
        sys.path.insert(0, str(JOBS))
    return importlib.import_module("benchmarks.feed")


def _spin(seconds: float) -> None:
    t0 = time.thread_time()
    while time.thread_time() - t0 < seconds:
        pass


class _Work:
    def method(self, s):
        _spin(s)
        return self.inner(s)

    def inner(self, s):
        _spin(s)
        return "ok"

    @classmethod
    def cls(cls, s):
        _spin(s)
        return "cls"


def test_meter_counts_thread_cpu_per_part_and_undoes_itself(feed):
    m = feed.Meter()
    orig = _Work.__dict__["method"], _Work.__dict__["cls"]
    m.wrap(_Work, "method", "a")
    m.wrap(_Work, "inner", "b")
    m.wrap(_Work, "cls", "c")
    assert _Work().method(0.02) == "ok" and _Work.cls(0.01) == "cls"
    t = threading.Thread(target=lambda: time.sleep(0.05))  # waiting costs no CPU
    t.start()
    t.join()
    assert 0.035 <= m.cpu["a"] < 0.2 and 0.015 <= m.cpu["b"] < 0.1 and 0.008 <= m.cpu["c"] < 0.1  # a includes b
    assert m.calls == {"a": 1, "b": 1, "c": 1}
    m.uninstall()
    assert (_Work.__dict__["method"], _Work.__dict__["cls"]) == orig


def _result(total, hf, frames=(10, 476, 840, 3)):
    parts = {"render": 0.8, "vllm_input": hf + 2, "hf_processor": hf, "mm_hash": 0.1, "submit": 0.2, "out_decode": 3,
             "output": 5, "detok": 0, "logprobs": 3, "digits": 0.2, "rows": 0.8, "other": 10, "total": total}
    return {"ms_per_video": parts, "frames": list(frames), "frame_bytes": 11_995_200, "prompt_tokens": 3211,
            "output_tokens": 300, "load": [3.0, 3.5], "threads_ms_per_video": {"MainThread": 1.0}}


def test_report_prints_the_table_and_the_reference_line(feed):
    res = {"feed": {"results": {"5s@480p": {"baseline": _result(90.0, 23), "lean": _result(48.4, 23)},
                                "10s@720p": {"lean": _result(120.0, 80, (20, 448, 812, 3))}},
                    "transit": {"5s@480p": {"arrow_bytes": 11_995_200, "processed_bytes": 47_980_880,
                                            "hf_processor_ms_standalone": 22.0, "hf_uint8_ms_standalone": 18.0,
                                            "numpy_uint8_ms_standalone": 8.04, "numpy_float32_ms_standalone": 15.0}}}}
    lines = feed.report(res)
    text = "\n".join(lines)
    assert "| part | baseline | lean |" in text and "| **total (process CPU)** | 90.0 | 48.4 |" in text
    assert "| target | <= 35 | <= 35 |" in text and "<= 70" in text
    assert "| 5s@480p | 12.0 MB | 48.0 MB | 4.00x | 1.34 / 5.37 Gbit/s | 18.0 / 22.0 / 8.0 / 15.0 |" in text
    ref = next(l for l in lines if l.startswith("actor CPU"))
    assert ref == "actor CPU per video at the reference workload: 48 ms (budget 70; variant lean; batches of 4, 1 in flight)"
    assert "target 5s@480p <= 35 ms: NOT met (48.4 ms, variant lean, 1-min load 3.0/3.5)" in lines
    res["feed"]["results"]["5s@480p"]["decodepatch"] = _result(50.0, 0)  # the pipeline's default is the reference, not the best
    res["feed"].update(batch=16, inflight=2)
    lines = feed.report(res)
    assert lines[-2:] == ["actor CPU per video at the reference workload: 50 ms (budget 70; variant decodepatch; batches of 16, "
                          "2 in flight)", "target 5s@480p <= 35 ms: NOT met (50.0 ms, variant decodepatch, 1-min load 3.0/3.5)"]
    assert feed.report({}) == []


def test_make_batch_is_shaped_like_the_decode_stage_output(feed):
    import numpy as np

    from pipeline.stages.score import ScoreStage
    from pipeline.video.decode import DecodedVideo

    dv = DecodedVideo(frames=np.zeros((4, 56, 84, 3), np.uint8), indices=[0, 3, 6, 9], total_frames=10, src_fps=2.0,
                      duration_s=5.0, width=84, height=56)
    b = feed.make_batch([dv], 3, start=7)
    assert set(ScoreStage.INPUT_COLUMNS) <= set(b)
    firsts = {bytes(f[0, 0, 0]) for f in b["frames"]}
    assert len(firsts) == 3  # every video differs: no cache can serve a repeat
    assert list(b["row_id"]) == ["feed-000007", "feed-000008", "feed-000009"]
    assert all(p.shape == (0, 1176) for p in b["patches"])
    # decode.patchify: patches (the same bytes, permuted) instead of frames, as the decode stage ships them
    from pipeline.vs2.processor import Patches

    p = feed.make_batch([dv], 3, start=7, patchify=True)
    assert all(f.size == 0 for f in p["frames"])
    for f, q in zip(b["frames"], p["patches"]):
        assert np.array_equal(Patches(q, f.shape[:3]).frames(), f)


def test_variants_compare_the_hf_processor_with_the_pass_through_and_decode_patches(feed, tmp_path):
    """`lean` keeps vLLM's HF video processor, `passthrough` pre-processes the frames with numpy in the actor,
    `decodepatch` (the pipeline's default config) gets them patchified by the decode stage."""
    from pipeline.config import EngineConfig, ScoreConfig

    assert feed.VARIANTS["lean"][1]["video_processor"] == "hf"
    assert feed.VARIANTS["passthrough"] == feed.VARIANTS["decodepatch"] == ({}, {"video_processor": "numpy"})
    assert EngineConfig().video_processor == "numpy" and feed.PATCHED == {"decodepatch"} == {feed.DEFAULT_VARIANT}
    assert all(opts.get("video_processor") == "hf" for v, (_, opts) in feed.VARIANTS.items() if v not in ("passthrough", "decodepatch"))
    default = ScoreConfig.model_validate({"input": {"shards": "x"}, "output": {"path": "x"}})
    for v in feed.VARIANTS:
        cfg = feed.score_config(tmp_path, tmp_path, v, 300, 4096, 16, 2)
        assert cfg.decode_patchify() is (v in feed.PATCHED)
        assert (cfg.engine.max_num_seqs, cfg.engine.batch_size, cfg.engine.batches_in_flight) == (32, 16, 2)
    assert default.decode_patchify() and (default.engine.batch_size, default.engine.batches_in_flight) == (16, 2)
