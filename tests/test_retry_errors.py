"""`vscore score CONFIG --retry-errors`: the retryable error rows of a finished run are scored again and
replace the old rows exactly once, in the output and in the quarantine table."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.dataset as pads

from pipeline.config import ScoreConfig
from pipeline.run.job import run
from pipeline.tools.pack import pack

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "videos"


def _rows(path) -> list[dict]:
    return pads.dataset(str(path), format="parquet", partitioning="hive").to_table().to_pylist()


def test_retry_errors_replaces_rows_exactly_once(ray_local, tmp_path):  # noqa: F811
    recs = [json.loads(l) for l in (SAMPLES / "manifest.jsonl").read_text().splitlines() if l.strip()][:4]
    src = tmp_path / "src"
    src.mkdir()
    lines = []
    for i, r in enumerate(recs):
        (src / f"v{i}.mp4").write_bytes((SAMPLES / r["file"]).read_bytes())
        lines.append(json.dumps({"file": f"v{i}.mp4", "prompt": ("FLAKY " if i in (1, 3) else "") + r["prompt"]}))
    (src / "bad.mp4").write_bytes(b"not a video at all" * 10)  # a decode error: retried, fails again
    lines.append(json.dumps({"file": "bad.mp4", "prompt": "broken"}))
    (src / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    pack(src, str(tmp_path / "shards"), shard_size=3)
    flag = tmp_path / "flaky"
    flag.write_text("on")
    out = tmp_path / "out"
    cfg = ScoreConfig.model_validate({
        "input": {"shards": f"{tmp_path}/shards/*.tar", "samples_per_block": 2},
        "decode": {"actors": 1, "num_cpus": 0.25, "batch_size": 2, "max_pixels": 50176, "min_pixels": 3136},
        "engine": {"kind": "pipeline.engines.fixed:FixedOutputEngine", "engine_kwargs": {"fail_while": [str(flag), "FLAKY"]},
                   "actors": 1, "num_gpus": 0, "num_cpus": 0.25, "batch_size": 2, "batches_in_flight": 1},
        "output": {"path": str(out), "min_rows_per_file": 2},
        "ray": {"progress_bars": False},
    })
    s1 = run(cfg, progress_every_s=60)
    assert s1["errors_by_stage"] == {"engine": 2, "decode": 1} and s1["rows_out"] == 5
    assert len(_rows(s1["quarantine"])) == 3
    flag.unlink()  # the transient failure is over
    s2 = run(cfg, progress_every_s=60, retry_errors=True)
    rows = _rows(out)
    ids = Counter(r["row_id"] for r in rows)
    assert len(rows) == 5 and set(ids.values()) == {1}
    by_key = {r["key"]: r for r in rows}
    assert by_key["v1"]["status"] == "ok" and by_key["v3"]["status"] == "ok" and by_key["v1"]["visual_quality"] == 3
    assert by_key["bad"]["status"] == "error" and by_key["bad"]["error_stage"] == "decode"
    q = _rows(s1["quarantine"])
    assert [r["key"] for r in q] == ["bad"]  # replaced exactly once in the quarantine too
    assert s2["retried"] == 3 and s2["rows_out"] == 5 and s2["errors_by_stage"] == {"decode": 1} and s2["ok"] == 4
    # a second retry with nothing transient left: the decode error again, still exactly once
    s3 = run(cfg, progress_every_s=60, retry_errors=True)
    assert s3["retried"] == 1 and len(_rows(out)) == 5 and len(_rows(s1["quarantine"])) == 1
