"""`vscore best-of-n`: argmax of mean(v,t,p) per group, soft tie-break, then smallest key; failures skipped."""

from __future__ import annotations

import csv
import json

import pyarrow.parquet as pq
import pytest

from pipeline.tools.best_of_n import best_of_n, select_best
from pipeline.cli import main
from pipeline.schema import rows_to_table


def row(key, prompt, hard=(None, None, None), soft=(None, None, None), status="ok", oor=False, shard="s0.tar", meta=None):
    return {"row_id": f"id-{key}", "run_id": "r1", "shard_group": "g00000", "key": key, "shard": shard, "prompt": prompt,
            "status": status, "out_of_range": oor, "meta_json": json.dumps(meta) if meta else None,
            "visual_quality": hard[0], "text_alignment": hard[1], "physical_consistency": hard[2],
            "visual_quality_soft": soft[0], "text_alignment_soft": soft[1], "physical_consistency_soft": soft[2]}


ROWS = [
    # P1: clear winner by the hard mean: seed1 mean 4 > seed0 mean 3.67
    row("p1_seed0", "P1", (4, 4, 3), (3.9, 3.9, 2.9)),
    row("p1_seed1", "P1", (4, 4, 4), (3.5, 3.5, 3.5)),
    row("p1_seed2", "P1", (2, 2, 2), (2.0, 2.0, 2.0)),
    # P2: hard means tie (4, 4); soft breaks it: seed1 soft mean 3.9 > seed0 3.8
    row("p2_seed0", "P2", (4, 4, 4), (3.8, 3.8, 3.8)),
    row("p2_seed1", "P2", (5, 4, 3), (4.9, 3.9, 2.9)),
    # P3: hard and soft equal -> smallest key (the official first maximum); failures skipped and counted
    row("p3_seed1", "P3", (3, 3, 3), (3.0, 3.0, 3.0)),
    row("p3_seed0", "P3", (3, 3, 3), (3.0, 3.0, 3.0)),
    row("p3_seed2", "P3", status="error"),
    row("p3_seed3", "P3"),                                    # ok but parse failed: null scores
    row("p3_seed4", "P3", (9, 9, 9), (5.0, 5.0, 5.0), oor=True),  # out of range: skipped by default
    # P4: hard tie, one candidate without soft scores ranks below the one with them
    row("p4_seed0", "P4", (3, 3, 3)),
    row("p4_seed1", "P4", (3, 3, 3), (2.0, 2.0, 2.0)),
    # P5: nothing valid -> a no_valid row, not a crash
    row("p5_seed0", "P5", status="error"),
    row("p5_seed1", "P5"),
]


def by_group(result):
    return {r["group"]: r for r in result}


def test_official_rule_and_tie_breaks():
    res = by_group(select_best(ROWS))
    assert list(res) == ["P1", "P2", "P3", "P4", "P5"]
    assert res["P1"]["key"] == "p1_seed1" and res["P1"]["score"] == pytest.approx(4.0)
    assert res["P1"]["tie_break_score"] == pytest.approx(3.5) and res["P1"]["n_best"] == 1
    assert res["P2"]["key"] == "p2_seed1" and res["P2"]["n_best"] == 2
    assert res["P2"]["tie_break_score"] == pytest.approx((4.9 + 3.9 + 2.9) / 3)
    p3 = res["P3"]
    assert p3["key"] == "p3_seed0" and p3["n_best"] == 2
    assert (p3["group_size"], p3["valid_count"], p3["skipped_count"]) == (5, 2, 3)
    assert (p3["skipped_error"], p3["skipped_null_score"], p3["skipped_out_of_range"]) == (1, 1, 1)
    assert res["P4"]["key"] == "p4_seed1"
    p5 = res["P5"]
    assert p5["status"] == "no_valid" and p5["key"] is None and p5["score"] is None
    assert (p5["group_size"], p5["valid_count"], p5["n_best"]) == (2, 0, 0)
    # row order does not matter
    assert by_group(select_best(list(reversed(ROWS)))) == res


def test_options():
    # keep out-of-range: the 9s win P3
    assert by_group(select_best(ROWS, keep_out_of_range=True))["P3"]["key"] == "p3_seed4"
    # soft primary: P1 seed0 soft mean 3.567 > seed1 3.5; P4 seed0 (no soft) is skipped
    soft = by_group(select_best(ROWS, use="soft"))
    assert soft["P1"]["key"] == "p1_seed0" and soft["P1"]["tie_break_score"] == pytest.approx(11 / 3)
    assert soft["P4"]["key"] == "p4_seed1" and soft["P4"]["skipped_null_score"] == 1
    # min aggregate: P2 seed0 min 4 > seed1 min 3
    assert by_group(select_best(ROWS, aggregate="min"))["P2"]["key"] == "p2_seed0"
    # sum picks the same as mean
    assert [r["key"] for r in select_best(ROWS, aggregate="sum")] == [r["key"] for r in select_best(ROWS)]
    # group by a meta_json field; rows without it form the null group (sorted last)
    rows = [row("a", "x", (3, 3, 3), meta={"prompt_id": 7}), row("b", "y", (4, 4, 4), meta={"prompt_id": 7}),
            row("c", "z", (1, 1, 1))]
    res = select_best(rows, group_by="meta.prompt_id")
    assert [(r["group"], r["key"]) for r in res] == [("7", "b"), (None, "c")]
    with pytest.raises(ValueError):
        select_best(ROWS, aggregate="median")


def test_dataset_and_cli_round_trip(tmp_path, capsys):
    scores = tmp_path / "scores.parquet"
    pq.write_table(rows_to_table(ROWS), scores)
    summary = best_of_n(str(scores), str(tmp_path / "best.parquet"))
    assert (summary["groups"], summary["groups_ok"], summary["groups_no_valid"], summary["rows"]) == (5, 4, 1, len(ROWS))
    table = pq.read_table(tmp_path / "best.parquet").to_pylist()
    assert [r["key"] for r in table] == ["p1_seed1", "p2_seed1", "p3_seed0", "p4_seed1", None]
    assert table[0]["visual_quality"] == 4 and table[0]["visual_quality_soft"] == pytest.approx(3.5)

    out_csv = tmp_path / "sub" / "best.csv"
    assert main(["best-of-n", str(scores), str(out_csv), "--group-by", "prompt", "--aggregate", "mean", "--use", "hard"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["groups_no_valid"] == 1
    with open(out_csv) as f:
        got = list(csv.DictReader(f))
    assert [r["key"] for r in got][:4] == ["p1_seed1", "p2_seed1", "p3_seed0", "p4_seed1"]
    assert got[4]["status"] == "no_valid"
    with pytest.raises(ValueError, match="no column"):
        best_of_n(str(scores), str(tmp_path / "x.parquet"), group_by="nope")
