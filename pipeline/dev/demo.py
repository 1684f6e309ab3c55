"""`vscore demo`: the whole pipeline on one machine with no network and no weights.

Builds the format-trained tiny judge (the tiny offline Qwen2.5-VL trained for seconds on CPU to answer in
VideoScore2's format; pipeline/dev/tiny_judge.py), packs the bundled sample videos into WebDataset shards
on an embedded loopback S3 server (moto), runs the `configs/local.yaml` job on a local Ray with the
transformers engine on CPU, and prints a summary plus a DuckDB query that reads the Parquet back.
The rows parse (strict) and carry soft scores, but the scores carry no information about the videos.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from pipeline.config import StorageOptions, load_config

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "samples" / "videos"
LOCAL_CONFIG = REPO / "configs" / "local.yaml"
BUCKET = "vscore-demo"


def run_demo(out: str | Path = "vscore-demo", shard_size: int = 3, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    from pipeline.run.job import run
    from pipeline.dev.s3_server import EmbeddedS3
    from pipeline.tools.pack import pack
    from pipeline.dev.tiny_judge import is_test_judge
    from pipeline.dev.tiny_model import build_tiny_model

    out = Path(out).resolve()
    scores = out / "scores"
    if scores.exists():
        shutil.rmtree(scores)
    t_start = time.time()
    model_dir = out / "tiny-model"
    if not is_test_judge(model_dir):  # built once; an older untrained tiny model here is replaced
        shutil.rmtree(model_dir, ignore_errors=True)
        build_tiny_model(model_dir, judge=True)
    with EmbeddedS3(buckets=[BUCKET]) as s3:
        storage = StorageOptions(endpoint_url=s3.endpoint_url)
        shards = pack(SAMPLES, f"s3://{BUCKET}/shards", shard_size=shard_size, storage=storage)
        packed = sum(s["samples"] for s in shards)
        cfg = load_config(LOCAL_CONFIG, [
            f"input.storage.endpoint_url={s3.endpoint_url}",
            f"engine.model={model_dir}",
            f"output.path={scores}",
            *overrides,
        ])
        summary = run(cfg, progress_every_s=15)
    summary["packed"] = packed
    summary["demo_wall_s"] = round(time.time() - t_start, 2)
    query = f"select status, parse_mode, count(*) from read_parquet('{scores}/**/*.parquet', hive_partitioning=true) group by all"
    summary["duckdb_query"] = query
    try:
        import duckdb

        summary["duckdb_result"] = duckdb.sql(query).fetchall()
    except Exception as e:  # noqa: BLE001 - the summary still stands without the readback
        summary["duckdb_result"] = f"duckdb readback failed: {e}"
    return summary


def print_summary(s: dict[str, Any]) -> None:
    print("\n=== vscore demo ===")
    print(f"samples packed (rows in): {s['packed']}  (rows read by the job: {s['rows_in']})")
    print(f"rows out: {s['rows_out']}   ok: {s['ok']}   errors: {s['errors']} {s['errors_by_stage'] or ''}   "
          f"skipped (prefilter): {s['skipped']}")
    print(f"parse modes of ok rows: {s['parse_modes']}")
    from pipeline.dev.tiny_judge import JUDGE_NOTE, is_test_judge

    if is_test_judge(s.get("model")):
        print(f"note: {JUDGE_NOTE}")
    print(f"job wall: {s['wall_s']} s   {s['videos_per_s']} videos/s   demo total: {s['demo_wall_s']} s")
    print(f"parquet: {s['output']}")
    print(f"duckdb:  duckdb -c \"{s['duckdb_query']}\"")
    print(f"         -> {s['duckdb_result']}")
    print(json.dumps({k: v for k, v in s.items() if k not in ('duckdb_result',)}, indent=2, default=str))
