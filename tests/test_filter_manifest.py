"""Round trip of a manifest run (issue 11, item 5): `vscore filter` on the scores of a manifest run writes the
kept rows with the corpus's own columns (and new shards with their videos), and that output is a manifest the
next job reads again: same row ids, same prompts and spans. The scores dataset is the layout `vscore score`
writes (hive Parquet, OUTPUT_SCHEMA, the run record with the run's input settings), its rows made by the real
read stage from a CSV of real clips (one Panda-70M row with three spans)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from pipeline.config import InputConfig, ScoreConfig
from pipeline.run.resume import guard_fingerprint
from pipeline.schema import rows_to_table
from pipeline.stages.manifest import iter_manifest_block, plan_blocks
from pipeline.stages.read import iter_shard

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videos"


@pytest.fixture()
def manifest_run(tmp_path):
    recs = [json.loads(l) for l in (SHARED / "manifest.jsonl").read_text().splitlines() if l.strip()]
    assert len(recs) == 16, "real clips missing"
    (tmp_path / "clips").mkdir()
    rows = []
    for i, r in enumerate(recs[:6]):
        name = f"clips/c{i}.mp4"
        (tmp_path / name).write_bytes((SHARED / r["file"]).read_bytes())
        rows.append({"clip_url": name, "caption": r["prompt"], "timestamp": "", "license": r["license"], "orig_id": f"id-{i}"})
    rows[5].update(timestamp="[['0:00:00.000', '0:00:01.500'], ['0:00:01.500', '0:00:03.000'], ['0:00:03.000', '0:00:04.000']]",
                   caption="['span one', 'span two', 'span three']")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    (tmp_path / "corpus.csv").write_text(buf.getvalue())
    columns = {"video": "clip_url", "prompt": "caption", "spans": "timestamp"}
    cfg = ScoreConfig.model_validate({"input": {"manifest": str(tmp_path / "corpus.csv"), "columns": columns,
                                                "manifest_block_bytes": 1024},
                                      "output": {"path": str(tmp_path / "scores")}})
    guard_fingerprint(cfg)  # the run record, as `vscore score` writes it at start
    run_id = cfg.resolved_run_id()
    scored = []
    for block in plan_blocks([cfg.input.manifest], cfg.input):
        for n, r in enumerate(iter_manifest_block(block, "g00000", cfg.input)):
            r = {k: v for k, v in r.items() if k != "video"}
            vq = 5 if len(scored) % 2 == 0 else 2  # every other sample passes
            r.update(run_id=run_id, status="ok", parse_mode="strict", visual_quality=vq, text_alignment=4, physical_consistency=4)
            scored.append(r)
    assert len(scored) == 5 + 3
    part = tmp_path / "scores" / f"run_id={run_id}" / "shard_group=g00000"
    part.mkdir(parents=True)
    pq.write_table(rows_to_table(scored).drop_columns(["run_id", "shard_group"]), part / "part-0.parquet")
    return tmp_path, rows, scored, cfg


def test_filter_writes_the_corpus_columns_and_shards_and_they_read_again(manifest_run, capsys):
    tmp, rows, scored, cfg = manifest_run
    rc = main(["filter", str(tmp / "scores"), str(tmp / "kept.parquet"), "--where", "visual_quality >= 4",
               "--source-manifest", str(tmp / "kept.csv"), "--shards-out", str(tmp / "shards")])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    keep = [r for r in scored if r["visual_quality"] >= 4]
    assert summary["kept"] == len(keep) == 4 and summary["source_rows_written"] == 4 and summary["kept_not_found_in_manifest"] == 0
    with open(tmp / "kept.csv", newline="") as f:
        out = list(csv.DictReader(f))
    assert sorted(r["vscore_row_id"] for r in out) == sorted(r["row_id"] for r in keep)
    for o in out:  # the corpus's own columns, unchanged, plus vscore_* columns
        src = next(r for r in rows if r["orig_id"] == o["orig_id"])
        if src["timestamp"]:  # a row listing spans: narrowed to the kept span and its caption, in the same notation
            j = ["span one", "span two", "span three"].index(next(r["prompt"] for r in keep if r["row_id"] == o["vscore_row_id"]))
            pairs = [["0:00:00.000", "0:00:01.500"], ["0:00:01.500", "0:00:03.000"], ["0:00:03.000", "0:00:04.000"]]
            src = {**src, "timestamp": repr([pairs[j]]), "caption": repr([["span one", "span two", "span three"][j]])}
        assert {k: o[k] for k in src} == src
        assert o["vscore_visual_quality"] == "5"
    spans = sorted((o["vscore_start_s"], o["vscore_end_s"]) for o in out if o["vscore_start_s"])
    assert spans == sorted((str(r["start_s"]), str(r["end_s"])) for r in keep if r["start_s"] is not None)
    # the kept manifest is a manifest: the next job reads it with the same columns and gets the same rows
    again = InputConfig(manifest=str(tmp / "kept.csv"), columns=cfg.input.columns)
    reread = [r for b in plan_blocks([again.manifest], again) for r in iter_manifest_block(b, "g", again)]
    assert sorted(r["row_id"] for r in reread) == sorted(r["row_id"] for r in keep)
    assert all(r["status"] == "ok" for r in reread)
    assert sorted(r["prompt"] for r in reread) == sorted(r["prompt"] for r in keep)
    # new shards: one sample per kept clip, the video from its URL, the record and scores in the json
    shards = sorted((tmp / "shards").glob("shard-*.tar"))
    assert summary["videos_not_fetched"] == 0 and len(shards) == 1
    samples = list(iter_shard(str(shards[0]), "g", InputConfig(shards=str(shards[0]), prompt_fields=["caption"])))
    assert len(samples) == 4
    by_id = {json.loads(s["meta_json"])["vscore"]["row_id"]: s for s in samples}
    for r in keep:
        s = by_id[r["row_id"]]
        assert s["video"] == Path(r["source_url"]).read_bytes()
        assert json.loads(s["meta_json"])["vscore"]["start_s"] == r["start_s"]


def test_source_manifest_on_a_shard_run_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "scores").mkdir()
    rc = main(["filter", str(tmp_path / "scores"), str(tmp_path / "k.parquet"), "--where", "visual_quality >= 4",
               "--source-manifest", str(tmp_path / "k.csv")])
    assert rc == 2
    assert "is not the output of a manifest run" in capsys.readouterr().err
