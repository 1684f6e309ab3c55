"""The inputs and bookkeeping of `jobs/bench.py --scale`'s real-pipeline part (jobs/benchmarks/scale_pipeline.py):
its micro clips decode through the real decode stage at the model's minimum size, its shards read back
through the real shard reader with one distinct prompt per row, its moto server runs in a child process
that the process sampler tells apart from Ray. Fast: no pipeline run."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "jobs"))

from benchmarks import scale_pipeline as sp  # noqa: E402
from benchmarks.procs import _kind  # noqa: E402
from pipeline.config import load_config  # noqa: E402


def test_micro_clips_decode_to_two_frames_of_28x28(tmp_path):
    from pipeline.stages.decode import DecodeStage

    clips = sp.micro_clips(tmp_path, count=2)
    assert len(set(clips)) == 2 and all(len(c) < 4096 for c in clips)
    cfg = load_config(None, [*sp.MICRO_DECODE], base={"input": {"shards": "x"}, "output": {"path": "y"}})
    stage = DecodeStage(cfg.decode, cfg.prefilter)
    for c in clips:
        r = stage.decode_row(c, "ok", None, None)
        assert r["status"] == "ok", r["error"]
        assert r["frames"].shape == (2, 28, 28, 3) and r["frames"].dtype == np.uint8


def test_micro_shards_read_back_one_row_per_sample_with_distinct_prompts(tmp_path):
    from pipeline.config import InputConfig
    from pipeline.stages.read import iter_shard

    clips = sp.micro_clips(tmp_path, count=2)
    dest = sp.micro_shards(tmp_path, clips, 25, 10)
    shards = sorted(dest.glob("shard-*.tar"))
    assert [p.name for p in shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    rows = [r for s in shards for r in iter_shard(str(s), "0", InputConfig(shards=str(dest / "shard-*.tar")))]
    assert len(rows) == 25 and all(r["status"] == "ok" for r in rows)
    assert len({r["prompt"] for r in rows}) == 25  # the dedupe key (content hash + prompt) differs on every row
    assert len({bytes(r["video"]) for r in rows}) == 2
    assert sp.micro_shards(tmp_path, clips, 25, 10) == dest  # cached


def test_moto_child_serves_s3_and_is_not_counted_as_ray():
    import s3fs

    from benchmarks.procs import ProcSampler

    with sp.MotoChild() as moto, ProcSampler(every=0.1) as s:
        fs = s3fs.S3FileSystem(endpoint_url=moto.endpoint_url, skip_instance_cache=True)
        fs.pipe_file(f"{sp.BUCKET}/a/b.json", b"{}")
        fs.pipe_file(f"{sp.BUCKET}/_vscore/x/c.json", b"{}")
        fs.pipe_file(f"{sp.BUCKET}/a/p.parquet", b"x")
        assert sp.count_objects(fs, sp.BUCKET) == {"other": 1, "parquet files": 1, "_vscore/x": 1}
        assert moto.rss_mib() > 10
        import time

        time.sleep(0.3)
    assert moto.proc is None
    assert s.cpu.get("moto S3 (bench)", 0) > 0
    # the storage server is not a Ray process: in no memory sum (other children, e.g. a Ray the test session
    # started earlier, may be)
    assert not any(k.startswith("moto") for k in s.peak_by_kind) and not any(k.startswith("moto") for k in s.current["by_kind"])
    assert _kind("python -c \nfrom pipeline.dev.s3_server import EmbeddedS3\n") == "moto S3 (bench)"
    assert _kind("ray::stage") == "compaction task"


def test_control_plane_cpu_leaves_out_decode_and_the_storage_server():
    per = sp.cpu_per_row({"driver": 1.0, "driver (sys)": 0.5, "decode actors": 5.0, "moto S3 (bench)": 7.0,
                          "score actor": 2.0}, 1000)
    assert per["driver"] == 1.0 and per["decode actors"] == 5.0
    assert per["control plane (all but decode actors and moto)"] == 3.0


def test_load_watcher_writes_a_progress_line_per_poll(tmp_path):
    import json
    import time

    w = sp.LoadWatcher(tmp_path / "p.jsonl")
    w.every = 0.05
    with w:
        t0 = time.time()
        while len(w.series) < 3 and time.time() - t0 < 30:  # the first poll imports ray
            time.sleep(0.05)
    lines = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(lines) >= 2 and len(lines) == len(w.series) == len(w.driver_rss_mib)
    assert all(x["driver_rss_mib"] > 10 and x["rows_scored"] is None for x in lines)  # no run, no stats actor
    assert w.summary()["samples"] == len(lines)
