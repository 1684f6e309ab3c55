"""Engine faults: a scoring actor that dies is restarted by Ray and its batch retried; a sample that
kills the engine twice is quarantined as an error row instead of looping forever."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.dataset as pads

from pipeline.config import ScoreConfig
from pipeline.run.job import run
from pipeline.tools.pack import pack

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "videos"


def test_poison_sample_quarantined(ray_local, tmp_path):  # noqa: F811
    recs = [json.loads(l) for l in (SAMPLES / "manifest.jsonl").read_text().splitlines() if l.strip()][:5]
    src = tmp_path / "src"
    src.mkdir()
    lines = []
    for i, r in enumerate(recs):
        name = f"v{i}.mp4"
        (src / name).write_bytes((SAMPLES / r["file"]).read_bytes())
        lines.append(json.dumps({"file": name, "prompt": ("POISON " if i == 2 else "") + r["prompt"]}))
    (src / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    pack(src, str(tmp_path / "shards"), shard_size=5)
    out = tmp_path / "out"
    cfg = ScoreConfig.model_validate({
        "input": {"shards": f"{tmp_path}/shards/*.tar", "samples_per_block": 5},
        "decode": {"actors": 1, "num_cpus": 0.25, "batch_size": 5, "max_pixels": 50176, "min_pixels": 3136},
        "engine": {"kind": "pipeline.engines.fixed:FixedOutputEngine", "engine_kwargs": {"crash_on": "POISON"},
                   "actors": 1, "num_gpus": 0, "num_cpus": 0.25, "batch_size": 5, "batches_in_flight": 1,
                   "max_restarts": 3, "max_task_retries": 3},
        "output": {"path": str(out), "min_rows_per_file": 5},
        "ray": {"progress_bars": False},
    })
    summary = run(cfg, progress_every_s=60)
    rows = {r["key"]: r for r in pads.dataset(str(out), format="parquet", partitioning="hive").to_table().to_pylist()}
    assert len(rows) == 5
    assert rows["v2"]["status"] == "error" and rows["v2"]["error_stage"] == "engine"
    assert "died 2 times while scoring this sample alone" in rows["v2"]["error"]
    assert all(rows[f"v{i}"]["status"] == "ok" and rows[f"v{i}"]["parse_mode"] == "strict" for i in (0, 1, 3, 4))
    assert summary["errors_by_stage"] == {"engine": 1}
    q = pads.dataset(summary["quarantine"], format="parquet", partitioning="hive").to_table().to_pylist()
    assert [r["key"] for r in q] == ["v2"]
    assert not (out / "_vscore" / "inflight" / summary["run_id"]).exists()  # markers cleared at the end
