"""Compaction on S3 sees the files committed since its last listing (found by `jobs/bench.py --scale` on moto:
7-8 files at 10^4 rows in one partition folder where local disk leaves 1).

A running job's driver keeps one cached s3fs instance; write tasks commit files from other processes. The
driver's compaction (`pipeline.run.rewrite.committed_files`) walks the partition folders through that instance,
so a listing cached by an earlier fold hid every file committed after it; the walk now drops the cached
listings under the run's folder first (`storage.drop_listings`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import ScoreConfig
from pipeline.dev.scale_state import commit_rows
from pipeline.run import resume
from pipeline.run.compact import compact
from pipeline.run.rewrite import committed_files
from tests.fixtures_infra import s3  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent

_OTHER_PROCESS = """
import json, sys
from pipeline.config import ScoreConfig
from pipeline.dev.scale_state import _task_table
from pipeline.stages.sink import CommittedParquetSink
cfg = ScoreConfig.model_validate(json.loads(sys.argv[1]))
sink = CommittedParquetSink(cfg.output, cfg.resolved_run_id())
for j in range(3):
    sink.write([_task_table(cfg.resolved_run_id(), "synthetic://shard-000009.tar", "g00000", [f"x{j}-{i}" for i in range(100)])], None)
"""


def test_compaction_sees_files_committed_after_an_earlier_listing(s3):  # noqa: F811
    cj = {"input": {"shards": "synthetic://shard-*.tar"},
          "output": {"path": "s3://vscore-test/compact-listing/out", "storage": {"endpoint_url": s3.endpoint_url}}}
    cfg = ScoreConfig.model_validate(cj)
    commit_rows(cfg, 2000, shard_size=1000, rows_per_task=500)
    st = resume.load_state(cfg)
    resume.consolidate(cfg, st)
    assert sum(len(v) for v in committed_files(cfg, st).values()) == 4  # a fold's listing
    # three write tasks commit from another process (a write task of the running job)
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", **{k: v for k, v in __import__("os").environ.items()
                                                                  if k.startswith("AWS_")}}
    subprocess.run([sys.executable, "-c", _OTHER_PROCESS, json.dumps(cj)], check=True, env=env, timeout=120)
    st = resume.load_state(cfg)
    resume.consolidate(cfg, st)
    assert len(st.digests) == 7
    assert sum(len(v) for v in committed_files(cfg, st).values()) == 7
    compact(cfg, st)
    fs = s3.filesystem()
    files = [p for p in fs.find("vscore-test/compact-listing/out") if p.endswith(".parquet") and "/_vscore" not in p]
    assert len(files) == 1
