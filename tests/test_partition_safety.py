"""Partition values are never paths: every column a run may be partitioned by, given hostile values,
lands inside the output root, and readers (pyarrow, DuckDB) get the exact values back."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pytest
from pydantic import ValidationError

from pipeline.config import PARTITION_COLUMNS, ScoreConfig
from pipeline.stages.read import tar_bytes
from pipeline.stages.sink import _write_partitioned
from pipeline.storage import filesystem
from pipeline.config import StorageOptions

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples" / "videos"
HOSTILE = ["../../../etc/x", "/abs/y", "..", ".", "a=b/c=d", "100%2F", "sp ace\ttab", "ü/ß\u202e", "", None,
           "x" * 40, "__HIVE_DEFAULT_PARTITION__x", "run_id=z"]


def _inside(root: Path, p: Path) -> bool:
    return p.resolve().is_relative_to(root.resolve())


@pytest.mark.parametrize("col", PARTITION_COLUMNS)
def test_hostile_values_stay_inside_and_round_trip(tmp_path, col):
    root = tmp_path / "deep" / "out"
    root.mkdir(parents=True)
    table = pa.table({col: pa.array(HOSTILE, pa.string()), "n": pa.array(range(len(HOSTILE)), pa.int64())})
    fs, path = filesystem(str(root), StorageOptions())
    files = _write_partitioned(fs, path, table, [col], "d1")
    assert len(files) == len(HOSTILE)
    every = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert every and all(_inside(root, p) for p in every)
    assert all(p.parent.parent == root for p in every)  # exactly one partition level, whatever the value
    back = pads.dataset(str(root), format="parquet", partitioning=pads.partitioning(
        pa.schema([(col, pa.string())]), flavor="hive")).to_table().to_pylist()
    assert {r["n"]: r[col] for r in back} == dict(enumerate(HOSTILE))


def test_duckdb_reads_the_encoded_values_back(tmp_path):
    import duckdb

    table = pa.table({"run_id": pa.array(["a/b", "c d", "e=f"], pa.string()), "n": pa.array([0, 1, 2], pa.int64())})
    fs, path = filesystem(str(tmp_path), StorageOptions())
    _write_partitioned(fs, path, table, ["run_id"], "d1")
    got = duckdb.sql(f"select n, run_id from read_parquet('{tmp_path}/**/*.parquet', hive_partitioning=true) "
                     "order by n").fetchall()
    assert got == [(0, "a/b"), (1, "c d"), (2, "e=f")]


@pytest.mark.parametrize("run_id", ["../x", "a/b", "", ".hidden", "x" * 129, "a b"])
def test_explicit_run_ids_are_names_not_paths(run_id):
    """An explicit run id also names marker files and folders under _vscore/: only plain names."""
    with pytest.raises(ValidationError, match="run_id"):
        ScoreConfig.model_validate({"input": {"shards": "x"}, "output": {"path": "o", "run_id": run_id}})


@pytest.mark.parametrize("cols", [["key"], ["prompt"], ["shard"], ["meta_json"], ["run_id", "run_id"], ["nope"]])
def test_sample_data_columns_cannot_partition(cols):
    with pytest.raises(ValidationError, match="partition_cols"):
        ScoreConfig.model_validate({"input": {"shards": "x"}, "output": {"path": "o", "partition_cols": cols}})


@pytest.mark.slow
def test_run_with_hostile_keys_prompts_meta_and_run_id(tmp_path, ray_local):  # noqa: F811
    """A whole run partitioned by every allowed column, with a hostile explicit run id and model string and
    hostile keys, prompts and metadata: everything lands under the two roots, values round-trip."""
    from pipeline.run.job import run

    vid = (SAMPLES / json.loads((SAMPLES / "manifest.jsonl").read_text().splitlines()[0])["file"]).read_bytes()
    members = []
    for i, key in enumerate(["../../../esc/k", "/abs/k", "a=b", "%2Fx%2F"]):
        members += [(f"{key}{i}.mp4", vid),
                    (f"{key}{i}.json", json.dumps({"prompt": f"../../p{i}/", "meta": "../../../m", "run_id": "../x"}).encode())]
    members += [("bad.mp4", b"not a video"), ("bad.json", b'{"prompt": "../../q"}')]  # an error row too
    shards = tmp_path / "in" / "sub"
    shards.mkdir(parents=True)
    (shards / "shard-000000.tar").write_bytes(tar_bytes(members))
    out = tmp_path / "a" / "out"
    cfg = ScoreConfig.model_validate({
        "input": {"shards": f"{shards}/*.tar"},
        "decode": {"actors": 1, "num_cpus": 0.5, "max_pixels": 50176, "min_pixels": 3136},
        "engine": {"kind": "pipeline.engines.fixed:FixedOutputEngine", "model": "../../../../model/..",
                   "num_gpus": 0, "num_cpus": 0.25, "batches_in_flight": 1},
        "output": {"path": str(out), "run_id": "r.1-x_y", "partition_cols": list(PARTITION_COLUMNS)},
        "ray": {"progress_bars": False},
    })
    summary = run(cfg, progress_every_s=60)
    assert summary["rows_out"] == 5 and summary["errors"] == 1, summary
    roots = [out, Path(summary["quarantine"])]
    for p in tmp_path.rglob("*"):
        if p.is_file():
            assert _inside(tmp_path / "in", p) or any(_inside(r, p) for r in roots), p
    schema = pa.schema([(c, pa.string()) for c in PARTITION_COLUMNS])
    rows = pads.dataset(str(out), format="parquet", partitioning=pads.partitioning(schema, flavor="hive")).to_table().to_pylist()
    assert len(rows) == 5
    assert {r["run_id"] for r in rows} == {"r.1-x_y"} and {r["model"] for r in rows} == {"../../../../model/.."}
    assert sorted(r["status"] for r in rows) == ["error"] + ["ok"] * 4
    assert {r["key"] for r in rows if r["status"] == "ok"} == {"../../../esc/k0", "/abs/k1", "a=b2", "%2Fx%2F3"}
    # a rerun resumes (the encoded run id is found again): nothing is rescored or duplicated
    again = run(cfg, progress_every_s=60)
    assert again["rows_this_invocation"] == 0 and again["rows_out"] == 5
