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


def test_moto_index_lists_what_moto_lists():
    """The bench's sorted key index (jobs/benchmarks/moto_index.py) answers every ListObjectsV2 page as moto
    does: prefixes, delimiters folding sub-folders, pages of any size, continuation tokens and start-after,
    keys put, overwritten and deleted after the index was built."""
    import random

    import boto3
    from moto import mock_aws

    from benchmarks.moto_index import install

    def pages(s3, **kw):
        got, token = [], None
        while True:
            r = s3.list_objects_v2(Bucket="idx", **kw, **({"ContinuationToken": token} if token else {}))
            got.append(([o["Key"] for o in r.get("Contents", [])], [p["Prefix"] for p in r.get("CommonPrefixes", [])],
                        r["IsTruncated"]))
            if not r["IsTruncated"]:
                return got
            token = r["NextContinuationToken"]

    rng = random.Random(3)
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="idx")
        names = [f"out/run_id=r/g={g}/part-{i}.parquet" for g in range(4) for i in range(7)]
        names += [f"out/_vscore/score-store/r/{rng.getrandbits(8):02x}/{rng.getrandbits(64):016x}.json" for _ in range(60)]
        names += ["out/a.json", "out/a", "out.txt", "top"]
        for n in names[:40]:
            s3.put_object(Bucket="idx", Key=n, Body=b"x")
        undo = install()
        try:
            s3.list_objects_v2(Bucket="idx")  # the index is built from the keys already there
            for n in names[40:]:
                s3.put_object(Bucket="idx", Key=n, Body=b"x")
            s3.put_object(Bucket="idx", Key=names[3], Body=b"again")  # an overwrite is not a new name
            for n in names[::9]:
                s3.delete_object(Bucket="idx", Key=n)
            queries = [dict(Prefix=p, **d, **m) for p in ("", "out/", "out/run_id=r/", "out/_vscore/score-store/r/", "out/a", "nothing/")
                       for d in ({}, {"Delimiter": "/"}) for m in ({}, {"MaxKeys": 1}, {"MaxKeys": 5})]
            queries += [dict(Prefix="out/", StartAfter="out/run_id=r/g=1/part-3.parquet"),
                        dict(Prefix="out/", Delimiter="/", StartAfter="out/_vscore/", MaxKeys=2)]
            patched = [pages(s3, **q) for q in queries]
            s3.create_bucket(Bucket="idx2")  # a bucket whose first change comes after install
            for n in ("b/1", "a/2", "b/0"):
                s3.put_object(Bucket="idx2", Key=n, Body=b"x")
            fresh = s3.list_objects_v2(Bucket="idx2")["Contents"]
        finally:
            undo()
        plain = [pages(s3, **q) for q in queries]
        assert [o["Key"] for o in fresh] == [o["Key"] for o in s3.list_objects_v2(Bucket="idx2")["Contents"]] == ["a/2", "b/0", "b/1"]
    assert sum(len(k) for p in plain for k, _, _ in p) > 300  # the queries list real keys
    for q, a, b in zip(queries, patched, plain):
        assert a == b, q
