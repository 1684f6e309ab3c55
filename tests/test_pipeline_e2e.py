"""End to end on real components: pack to a moto S3 server, score on a local Ray with the tiny model
(transformers engine on CPU), read the partitioned Parquet back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.config import ScoreConfig, StorageOptions
from pipeline.run.job import run
from pipeline.schema import OUTPUT_SCHEMA, make_row_id
from pipeline.tools.pack import pack
from tests.outputs import read_output

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "videos"


@pytest.fixture(scope="module")
def packed(s3, tmp_path_factory):  # noqa: F811
    """The bundled samples plus one corrupt video (garbage bytes under a .mp4 name), 3 per shard."""
    src = tmp_path_factory.mktemp("src")
    manifest = [json.loads(l) for l in (SAMPLES / "manifest.jsonl").read_text().splitlines() if l.strip()][:4]
    for rec in manifest:
        (src / Path(rec["file"]).name).write_bytes((SAMPLES / rec["file"]).read_bytes())
        (src / Path(rec["file"]).with_suffix(".txt").name).write_text(rec["prompt"])
    (src / "zz_corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(range(256)) * 40)
    (src / "zz_corrupt.txt").write_text("a corrupt clip")
    st = StorageOptions(endpoint_url=s3.endpoint_url)
    shards = pack(src, "s3://vscore-test/e2e/shards", shard_size=2, storage=st)
    return shards, st


def _cfg(model_dir, storage, out: str, **engine) -> ScoreConfig:
    return ScoreConfig.model_validate({
        "input": {"shards": "s3://vscore-test/e2e/shards/shard-*.tar", "storage": storage.model_dump(), "samples_per_block": 2},
        "decode": {"actors": 1, "num_cpus": 0.25, "batch_size": 2},
        "engine": {"kind": "transformers", "model": str(model_dir), "dtype": "float32", "device": "cpu", "actors": 1,
                   "num_gpus": 0, "num_cpus": 0.5, "batch_size": 2, "batches_in_flight": 1, **engine},
        "sampling": {"max_new_tokens": 24},
        "output": {"path": out, "storage": storage.model_dump(), "shards_per_group": 2},
        "ray": {"progress_bars": False},
    })


def test_pack_score_readback_on_s3(ray_local, packed, model_dir):  # noqa: F811
    shards, st = packed
    n_packed = sum(s["samples"] for s in shards)
    out = "s3://vscore-test/e2e/scores"
    summary = run(_cfg(model_dir, st, out), progress_every_s=5)
    table = read_output(out, st)
    # rows conserved: one row per packed sample, row ids unique and deterministic
    assert table.num_rows == n_packed == summary["rows_out"] == summary["rows_in"]
    ids = table.column("row_id").to_pylist()
    assert len(set(ids)) == n_packed
    for row in table.to_pylist():
        assert row["row_id"] == make_row_id(row["shard"], row["key"])
    # schema: exactly the fixed columns, with their types (partition columns come back as strings)
    assert set(table.schema.names) == set(OUTPUT_SCHEMA.names)
    for f in OUTPUT_SCHEMA:
        assert table.schema.field(f.name).type == f.type, f.name
    # hive partitions: run_id=.../shard_group=...
    rows = {r["key"]: r for r in table.to_pylist()}
    bad = rows["zz_corrupt"]
    assert bad["status"] == "error" and bad["error_stage"] == "decode" and bad["error"]
    good = [r for k, r in rows.items() if k != "zz_corrupt"]
    assert all(r["status"] == "ok" for r in good)
    for r in good:
        assert r["num_frames"] >= 4 and r["num_frames"] % 2 == 0
        assert r["width"] % 28 == 0 and r["height"] % 28 == 0
        assert r["prompt_tokens"] > r["num_frames"] // 2 * (r["width"] // 28) * (r["height"] // 28)  # video tokens + text
        assert 0 < r["output_tokens"] <= 24 and r["raw_output"] is not None
        assert r["parse_mode"] in ("strict", "tolerant", "failed")
        assert r["model"] == str(model_dir) and r["template"] == "vs2-eval"
        assert r["run_id"] == summary["run_id"]
    assert summary["errors_by_stage"] == {"decode": 1}
    # the summary JSON sits next to the output, ignored by dataset readers
    from pipeline.storage import filesystem

    fs, root = filesystem(out, st)
    saved = json.loads(fs.cat(f"{root}/_vscore/summary-{summary['run_id']}.json"))
    assert saved["rows_out"] == n_packed


def test_same_config_same_outputs(ray_local, packed, model_dir, tmp_path):  # noqa: F811
    """Per-video seeds: rerunning the same config reproduces every row's generated text."""
    shards, st = packed
    a = run(_cfg(model_dir, st, str(tmp_path / "a")), progress_every_s=60)
    b = run(_cfg(model_dir, st, str(tmp_path / "b")), progress_every_s=60)
    ta = {r["row_id"]: r["raw_output"] for r in read_output(str(tmp_path / "a"), StorageOptions()).to_pylist()}
    tb = {r["row_id"]: r["raw_output"] for r in read_output(str(tmp_path / "b"), StorageOptions()).to_pylist()}
    assert a["run_id"] == b["run_id"] and ta == tb
    assert len({v for v in ta.values() if v}) > 1  # different videos, different seeds, different text


@pytest.mark.parametrize("setting, local, expected", [(None, True, False), (None, False, True), (True, True, True), (False, False, False)])
def test_actor_locality_follows_config_and_cluster(ray_local, packed, model_dir, monkeypatch, setting, local, expected):  # noqa: F811
    """Actor locality is off by default only on the one-node Ray that vscore started itself."""
    import ray.data

    import pipeline.run.job as job

    _, st = packed
    cfg = _cfg(model_dir, st, "s3://vscore-test/e2e/unused")
    cfg.ray.actor_locality = setting
    monkeypatch.setattr(job, "_STARTED_LOCAL_RAY", local)
    ctx = ray.data.DataContext.get_current()
    monkeypatch.setattr(ctx.execution_options, "actor_locality_enabled", not expected)
    job.build_dataset(cfg, ["s3://vscore-test/e2e/shards/shard-000000.tar"])
    assert ctx.execution_options.actor_locality_enabled is expected


@pytest.mark.parametrize("decode_cpus", [0.25, 0.5, 1.0])
def test_reads_never_fuse_into_decode_actors(ray_local, packed, model_dir, decode_cpus):  # noqa: F811
    """The plan production runs (read tasks, decode actors, score actors, write) at every setting, also
    when decode.num_cpus equals input.read_num_cpus (Ray Data fused read into the decode actors there, so
    tests ran another plan than production)."""
    from pipeline.run.job import build_dataset, physical_operators

    _, st = packed
    cfg = _cfg(model_dir, st, "s3://vscore-test/e2e/unused")
    cfg.decode.num_cpus = decode_cpus
    cfg.input.read_num_cpus = 0.25
    ops = physical_operators(build_dataset(cfg, ["s3://vscore-test/e2e/shards/shard-000000.tar"]))
    assert ops == ["Input", "MapBatches(read_shards_batch)", "MapBatches(DecodeStage)", "MapBatches(ScoreStage)"]
