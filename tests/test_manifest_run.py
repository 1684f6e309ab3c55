"""A manifest run end to end (issue 11, items 2 and 3): `vscore score` on a CSV manifest of clip spans of real
videos, killed with SIGKILL mid-run, then rerun: every row exactly once (a block of manifest rows resumes
like a shard), spans decoded, `source_url`/`start_s`/`end_s` in the output."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.schema import make_row_id
from pipeline.spans import span_label
from tests.test_resume import REPO, _env, _kill_group, _rows, _score, _wait_for_commits

SAMPLES = REPO / "samples" / "videos"
SPANS = [(0.0, 2.0), (1.0, 3.5), (None, None)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """21 manifest rows: the 7 bundled clips x 3 spans (two spans and the whole clip), relative paths."""
    root = tmp_path_factory.mktemp("corpus")
    recs = [json.loads(l) for l in (SAMPLES / "manifest.jsonl").read_text().splitlines() if l.strip()]
    assert len(recs) == 7
    rows = []
    for r in recs:
        name = Path(r["file"]).name
        (root / name).write_bytes((SAMPLES / r["file"]).read_bytes())
        for s, e in SPANS:
            rows.append({"path": name, "text": r["prompt"], "t0": "" if s is None else s, "t1": "" if e is None else e,
                         "license": r["license"]})
    with open(root / "corpus.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    expected = {make_row_id(f"{root}/{r['path']}", span_label((s, e))): (s, e) for r, (s, e) in
                zip(rows, SPANS * 7)}
    assert len(expected) == 21
    return root, expected


def _config(tmp: Path, model_dir: Path, root: Path, out: Path) -> Path:
    import yaml

    cfg = {
        "input": {"manifest": f"{root}/corpus.csv", "columns": {"video": "path", "prompt": "text", "start_s": "t0", "end_s": "t1"},
                  "manifest_block_bytes": 1024, "samples_per_block": 1},
        "decode": {"actors": 1, "num_cpus": 0.25, "batch_size": 1},
        "engine": {"kind": "transformers", "model": str(model_dir), "dtype": "float32", "device": "cpu",
                   "actors": 1, "num_gpus": 0, "num_cpus": 0.5, "batch_size": 1, "batches_in_flight": 1},
        "sampling": {"max_new_tokens": 24},
        "output": {"path": str(out), "min_rows_per_file": 1, "shards_per_group": 2},
        "ray": {"progress_bars": False, "num_cpus": 2, "object_store_memory": 268435456},
    }
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_manifest_run_killed_then_resumed_exactly_once(tmp_path, model_dir, corpus):
    import pyarrow.dataset as pads

    root, expected = corpus
    out = tmp_path / "out"
    cfg = _config(tmp_path, model_dir, root, out)
    env = _env(tmp_path)
    proc = _score(cfg, env)
    try:
        _wait_for_commits(proc, out, 3)
    finally:
        _kill_group(proc, env)
    partial = {r["row_id"] for r in _rows(out)}
    assert 0 < len(partial) < len(expected), "kill landed mid-run"
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "score", str(cfg)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(done.stdout[done.stdout.index("{"):])
    table = pads.dataset(str(out), format="parquet", partitioning="hive").to_table(
        columns=["row_id", "shard", "status", "error", "source_url", "start_s", "end_s", "num_frames", "meta_json"]).to_pylist()
    ids = [r["row_id"] for r in table]
    assert len(ids) == len(set(ids)) == len(expected) and set(ids) == set(expected)  # exactly once, nothing lost
    assert summary["rows_out"] == 21 and summary["rows_resumed"] > 0 and summary["errors"] == 0, summary
    assert len({r["shard"] for r in table}) >= 3  # several blocks, each a resume unit
    for r in table:
        assert r["status"] == "ok", r["error"]
        assert (r["start_s"], r["end_s"]) == expected[r["row_id"]]
        assert r["source_url"].startswith(f"{root}/") and r["num_frames"] >= 4
        assert set(json.loads(r["meta_json"])) == {"license"}


def test_s3_parquet_manifest_through_ray(ray_local, s3, model_dir, tmp_path):  # noqa: F811
    """In-process run on the moto S3 server: a Parquet manifest (2 row groups) of videos on S3, one Panda-style
    row with 2 spans, one 404 and one bad span: rows conserved, errors as rows (read / decode), spans decoded."""
    import io as _io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.config import ScoreConfig, StorageOptions
    from pipeline.run.job import run
    from pipeline.storage import filesystem
    from tests.outputs import read_output

    st = StorageOptions(endpoint_url=s3.endpoint_url)
    fs, _ = filesystem("s3://vscore-test/", st)
    recs = [json.loads(l) for l in (SAMPLES / "manifest.jsonl").read_text().splitlines() if l.strip()][:3]
    for i, r in enumerate(recs):
        fs.pipe_file(f"vscore-test/mrun/v/{i}.mp4", (SAMPLES / r["file"]).read_bytes())
    rows = [{"url": f"v/{i}.mp4", "caption": r["prompt"], "ts": None, "id": i} for i, r in enumerate(recs)]
    rows.append({"url": "v/0.mp4", "caption": "['first two seconds', 'the next two']", "ts": "[[0, 2], [2, 4]]", "id": 10})
    rows.append({"url": "v/missing.mp4", "caption": "a 404", "ts": None, "id": 11})
    rows.append({"url": "v/1.mp4", "caption": "['past the end']", "ts": "[['0:10:00', '0:10:02']]", "id": 12})
    buf = _io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf, row_group_size=3)
    fs.pipe_file("vscore-test/mrun/manifest.parquet", buf.getvalue())
    out = "s3://vscore-test/mrun/scores"
    cfg = ScoreConfig.model_validate({
        "input": {"manifest": "s3://vscore-test/mrun/manifest.parquet", "storage": st.model_dump(), "manifest_block_rows": 2,
                  "columns": {"video": "url", "prompt": "caption", "spans": "ts", "key": "id"}, "samples_per_block": 2},
        "decode": {"actors": 1, "num_cpus": 0.25, "batch_size": 2},
        "engine": {"kind": "transformers", "model": str(model_dir), "dtype": "float32", "device": "cpu", "actors": 1,
                   "num_gpus": 0, "num_cpus": 0.5, "batch_size": 2, "batches_in_flight": 1},
        "sampling": {"max_new_tokens": 16},
        "output": {"path": out, "storage": st.model_dump(), "shards_per_group": 2},
        "ray": {"progress_bars": False},
    })
    summary = run(cfg, progress_every_s=5)
    table = {r["key"]: r for r in read_output(out, st).to_pylist()}
    assert summary["rows_in"] == summary["rows_out"] == len(table) == 7
    assert set(table) == {"0", "1", "2", "10@0.0-2.0", "10@2.0-4.0", "11", "12@600.0-602.0"}
    for k in ("0", "1", "2", "10@0.0-2.0", "10@2.0-4.0"):
        assert table[k]["status"] == "ok" and table[k]["num_frames"] >= 4, table[k]["error"]
    assert table["10@2.0-4.0"]["prompt"] == "the next two" and table["10@2.0-4.0"]["start_s"] == 2.0
    assert table["10@0.0-2.0"]["source_url"] == "s3://vscore-test/mrun/v/0.mp4"
    assert (table["11"]["error_stage"], table["11"]["error"]) == ("read", "video not found: s3://vscore-test/mrun/v/missing.mp4")
    assert table["12@600.0-602.0"]["error_stage"] == "decode" and "bad span [600.0, 602.0] s" in table["12@600.0-602.0"]["error"]
    assert table["0"]["meta_json"] is None  # every column mapped: nothing else to keep
    # 2 row groups of 3 rows, blocks of <= 2 rows within a row group: 4 blocks, each a `shard`
    assert sorted({r["shard"] for r in table.values()}) == [f"s3://vscore-test/mrun/manifest.parquet#rows={g}:{a}-{b}"
                                                            for g in (0, 1) for a, b in ((0, 2), (2, 3))]
