"""`vscore reparse`: streaming re-parse of raw_output into a dataset with the same schema and partitions."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

import pipeline.tools.reparse as reparse_mod
from pipeline.cli import main
from pipeline.vs2.parse import parse_output
from pipeline.tools.reparse import open_scores_dataset, reparse_dataset
from pipeline.schema import OUTPUT_SCHEMA, rows_to_table

TRAINED = ("\n<think>\nmulti-dimensional analysis: the clip is smooth.\n</think>\n\n"
           "(1) visual quality: 3\n(2) text-to-video alignment: 4\n(3) physical/common-sense consistency: 2\n")
DESCRIPTORS = ("<think>x</think>\n(1) visual quality \u2013 clarity, smoothness, artifacts: 3\n"
               "(2) text-to-video alignment \u2013 fidelity to the prompt: 4\n"
               "(3) physical/common-sense consistency \u2013 naturalness and physics plausibility: 2")
SLASH5 = "Visual quality: 3/5; Text-to-video alignment: 4/5 ... Physical consistency: 2/5\n</think>\n</think>"
AFTER_THINK = ("<think>visual quality - early: 1, t2v alignment: 1, physical consistency: 1</think>\n"
               "**Visual quality**: 4\n**Text-to-video alignment**: 5\n**Physical consistency**: 3")
OUT_OF_RANGE = "visual quality: 7; text-to-video alignment: 0, physical/common-sense consistency: 12"
GIBBERISH = "gibberish without any scores"

# (shape name, raw_output, stored status, stored hard, stored soft, stored parse_mode) as an older run wrote them
SHAPES = [
    ("strict", TRAINED, "ok", (3, 4, 2), (2.99, 3.98, 1.97), "strict"),
    ("descriptors", DESCRIPTORS, "ok", (None, None, None), (None, None, None), "failed"),
    ("slash5", SLASH5, "ok", (None, None, None), (None, None, None), "failed"),
    ("after_think", AFTER_THINK, "ok", (1, 1, 1), (1.0, 1.0, 0.99), "tolerant"),  # an older parser read the CoT
    ("out_of_range", OUT_OF_RANGE, "ok", (5, 1, 5), (4.5, 0.9, 4.8), "strict"),  # an older parser clamped
    ("gibberish", GIBBERISH, "ok", (None, None, None), (None, None, None), "failed"),
    ("stale_t", TRAINED, "ok", (3, 5, 2), (3.0, 4.9, 2.0), "strict"),  # only t differs
    ("engine_error", TRAINED, "error", (None, None, None), (None, None, None), None),
    ("read_error", None, "error", (None, None, None), (None, None, None), None),
    ("ok_no_raw", None, "ok", (2, 2, 2), (2.0, 2.0, 2.0), "strict"),
]
N_PER_SHAPE = 300  # 3000 rows


def make_rows():
    rows = []
    for i in range(N_PER_SHAPE):
        for j, (name, raw, status, hard, soft, mode) in enumerate(SHAPES):
            n = i * len(SHAPES) + j
            rows.append({
                "row_id": f"{n:08x}", "run_id": "20250101" if n % 2 else "run-b", "shard_group": f"g{n % 3:05d}",
                "key": f"{name}-{i}", "shard": f"s3://b/shard-{n % 7:06d}.tar", "prompt": f"prompt {i}",
                "visual_quality": hard[0], "text_alignment": hard[1], "physical_consistency": hard[2],
                "visual_quality_soft": soft[0], "text_alignment_soft": soft[1], "physical_consistency_soft": soft[2],
                "visual_quality_expected": None if soft[0] is None else soft[0] + 0.01,
                "text_alignment_expected": None if soft[1] is None else soft[1] + 0.01,
                "physical_consistency_expected": None if soft[2] is None else soft[2] + 0.01,
                "rationale": "old rationale", "raw_output": raw, "parse_mode": mode, "out_of_range": False,
                "num_frames": 8, "width": 448, "height": 252, "duration_s": 4.0, "prompt_tokens": 1000,
                "output_tokens": 300, "model": "m", "template": "vs2-eval", "seed": n, "status": status,
                "error_stage": "engine" if status == "error" else None, "error": "boom" if status == "error" else None,
                "meta_json": json.dumps({"i": i}), "decode_s": 0.1, "score_s": 0.2,
            })
    return rows


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("reparse")
    src = root / "in"
    part = pads.partitioning(pa.schema([OUTPUT_SCHEMA.field("run_id"), OUTPUT_SCHEMA.field("shard_group")]), flavor="hive")
    pads.write_dataset(rows_to_table(make_rows()), src, format="parquet", partitioning=part, max_rows_per_group=500)
    os.makedirs(src / "_vscore")
    (src / "_vscore" / "summary-x.json").write_text("{}")  # ignored by discovery, like the job's summary
    return root, str(src)


def read_rows(url):
    dset, parts = open_scores_dataset(url)
    return dset.to_table().select(list(OUTPUT_SCHEMA.names)), parts


def leaf_dirs(root):
    return sorted(os.path.relpath(d, root) for d, _, files in os.walk(root) if any(f.endswith(".parquet") for f in files))


def test_reparse_dataset(source, monkeypatch):
    root, src = source
    seen_batches = []
    original = reparse_mod.reparse_batch

    def spy(batch, *a, **k):
        seen_batches.append(batch.num_rows)
        return original(batch, *a, **k)

    monkeypatch.setattr(reparse_mod, "reparse_batch", spy)
    out = str(root / "out")
    summary = reparse_dataset(src, out, batch_size=256)
    # streamed: never more than one batch of 256 rows at a time through the transform
    assert sum(seen_batches) == len(SHAPES) * N_PER_SHAPE and max(seen_batches) <= 256 and len(seen_batches) >= 12

    # same partition columns and directories, same schema (names and types), same rows
    assert summary["partition_cols"] == ["run_id", "shard_group"]
    assert leaf_dirs(out) == leaf_dirs(src)
    assert os.path.exists(os.path.join(out, "_vscore", "reparse-summary.json"))
    before, _ = read_rows(src)
    after, parts = read_rows(out)
    assert parts == ["run_id", "shard_group"]
    assert [(f.name, f.type) for f in after.schema] == [(f.name, f.type) for f in OUTPUT_SCHEMA]
    for path in pads.dataset(out, format="parquet").files:  # partition columns live in the paths only
        assert set(pq.read_schema(path).names) == set(OUTPUT_SCHEMA.names) - {"run_id", "shard_group"}
    old = {r["row_id"]: r for r in before.to_pylist()}
    new = {r["row_id"]: r for r in after.to_pylist()}
    assert old.keys() == new.keys() and len(new) == len(SHAPES) * N_PER_SHAPE
    assert {r["run_id"] for r in new.values()} == {"20250101", "run-b"}  # digits stay strings

    untouched = set(OUTPUT_SCHEMA.names) - set(reparse_mod._REPARSED)
    dims = ("visual_quality", "text_alignment", "physical_consistency")
    for rid, o in old.items():
        n = new[rid]
        assert {c: n[c] for c in untouched} == {c: o[c] for c in untouched}
        shape = o["key"].rsplit("-", 1)[0]
        if o["status"] != "ok" or o["raw_output"] is None:
            assert n == o, shape  # error rows and ok rows without raw output: unchanged
            continue
        p = parse_output(o["raw_output"])
        assert tuple(n[d] for d in dims) == p.as_tuple(), shape
        assert (n["parse_mode"], n["out_of_range"], n["rationale"]) == (p.parse_mode, p.out_of_range, p.rationale)
        for d in dims:
            if n[d] == o[d]:
                assert (n[d + "_soft"], n[d + "_expected"]) == (o[d + "_soft"], o[d + "_expected"]), shape
            else:
                assert n[d + "_soft"] is None and n[d + "_expected"] is None, shape

    by_key = {r["key"].rsplit("-", 1)[0]: r for r in new.values()}
    assert by_key["descriptors"]["parse_mode"] == "tolerant" and by_key["descriptors"]["visual_quality"] == 3
    assert (by_key["slash5"]["text_alignment"], by_key["slash5"]["parse_mode"]) == (4, "tolerant")
    assert (by_key["after_think"]["visual_quality"], by_key["after_think"]["visual_quality_soft"]) == (4, None)
    assert by_key["out_of_range"]["out_of_range"] is True and by_key["out_of_range"]["physical_consistency"] == 12
    assert by_key["gibberish"]["parse_mode"] == "failed" and by_key["gibberish"]["visual_quality"] is None
    stale = by_key["stale_t"]
    assert (stale["visual_quality_soft"], stale["text_alignment_soft"], stale["physical_consistency_soft"]) == (3.0, None, 2.0)
    assert by_key["strict"]["rationale"] == "multi-dimensional analysis: the clip is smooth."

    n = N_PER_SHAPE
    assert summary["rows"] == 10 * n and summary["reparsed"] == 7 * n
    assert summary["error_rows_kept"] == 2 * n and summary["ok_rows_without_raw_output"] == n
    # changed: descriptors, slash5, after_think, out_of_range, stale_t
    assert summary["hard_changed"] == 5 * n
    # soft values nulled: after_think 3, out_of_range 3, stale_t 1 (descriptors/slash5 had none)
    assert summary["soft_nulled"] == 7 * n and summary["expected_nulled"] == 7 * n
    assert summary["mode_transitions"] == {"failed->tolerant": 2 * n, "failed->failed": n, "strict->strict": 3 * n,
                                           "tolerant->tolerant": n}

    # idempotent: re-parsing the output changes nothing
    again = reparse_dataset(out, str(root / "again"))
    assert again["hard_changed"] == 0 and again["soft_nulled"] == 0
    assert read_rows(str(root / "again"))[0].sort_by("row_id").equals(after.sort_by("row_id"))


def test_refuses_to_clobber(source):
    root, src = source
    with pytest.raises(ValueError, match="must not be IN"):
        reparse_dataset(src, src)
    with pytest.raises(ValueError, match="must not be IN"):
        reparse_dataset(src, src + "/nested")
    busy = root / "busy"
    busy.mkdir()
    (busy / "x.parquet").write_text("x")
    with pytest.raises(FileExistsError):
        reparse_dataset(src, str(busy))
    summary = reparse_dataset(src, str(busy), overwrite=True, partition_cols=["run_id"])
    assert summary["rows"] == len(SHAPES) * N_PER_SHAPE and not (busy / "x.parquet").exists()
    assert sorted(os.listdir(busy)) == ["_vscore", "run_id=20250101", "run_id=run-b"]


def test_single_file_and_cli_round_trip(tmp_path, capsys):
    src = tmp_path / "scores.parquet"
    rows = make_rows()[: len(SHAPES)]
    pq.write_table(rows_to_table(rows), src)
    out = tmp_path / "out"
    assert main(["reparse", str(src), str(out), "--batch-size", "4"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == len(SHAPES) and summary["partition_cols"] == []
    table, parts = read_rows(str(out))
    assert parts == [] and table.num_rows == len(SHAPES)
    got = {r["key"]: r for r in table.to_pylist()}
    assert got["descriptors-0"]["visual_quality"] == 3 and got["engine_error-0"]["visual_quality"] is None
    # and back into hive partitions on request
    assert main(["reparse", str(src), str(tmp_path / "out2"), "--partition-cols", "run_id,shard_group"]) == 0
    capsys.readouterr()
    assert read_rows(str(tmp_path / "out2"))[1] == ["run_id", "shard_group"]


def test_s3_round_trip(s3, capsys):
    """reparse, eval and best-of-n straight on an S3 endpoint (moto on loopback)."""
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs = s3.filesystem()
    part = pads.partitioning(pa.schema([OUTPUT_SCHEMA.field("run_id"), OUTPUT_SCHEMA.field("shard_group")]), flavor="hive")
    rows = make_rows()[: 4 * len(SHAPES)]
    pads.write_dataset(rows_to_table(rows), "vscore-test/reparse/in", format="parquet", partitioning=part,
                       filesystem=PyFileSystem(FSSpecHandler(fs)))
    ep = ["--endpoint-url", s3.endpoint_url]
    assert main(["reparse", "s3://vscore-test/reparse/in", "s3://vscore-test/reparse/out", *ep]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == len(rows) and summary["partition_cols"] == ["run_id", "shard_group"]
    assert fs.exists("vscore-test/reparse/out/_vscore/reparse-summary.json")
    # OUT not empty: one line and exit 2 from the CLI (OutputExistsError, a FileExistsError, from the library)
    assert main(["reparse", "s3://vscore-test/reparse/in", "s3://vscore-test/reparse/out", *ep]) == 2
    assert "exists and is not empty" in capsys.readouterr().err

    with fs.open("vscore-test/reparse/labels.jsonl", "w") as f:
        for r in rows:
            if r["key"].startswith("descriptors-"):
                f.write(json.dumps({"key": r["key"], "visual_quality": 3, "text_alignment": 4, "physical_consistency": 1}) + "\n")
        f.write(json.dumps({"key": "nosuch", "visual_quality": 3, "text_alignment": 4, "physical_consistency": 1}) + "\n")
    assert main(["eval", "--scores", "s3://vscore-test/reparse/out", "--labels", "s3://vscore-test/reparse/labels.jsonl",
                 "--use", "hard", "--run-id", "20250101", "--json", *ep]) == 0
    res = json.loads(capsys.readouterr().out)
    # the 4 descriptor rows (all in run "20250101", a digits-only partition value) now parse to (3, 4, 2)
    assert res["n"] == 4 and res["missing_by_reason"] == {"absent": 1} and res["visual_quality"]["acc"] == 100.0
    assert res["physical_consistency"]["acc"] == 0.0 and res["physical_consistency"]["relaxed_acc"] == 100.0

    assert main(["best-of-n", "s3://vscore-test/reparse/out", "s3://vscore-test/reparse/best.parquet", *ep]) == 0
    assert json.loads(capsys.readouterr().out)["groups"] == 4
    assert fs.exists("vscore-test/reparse/best.parquet")
