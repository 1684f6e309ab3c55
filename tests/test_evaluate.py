"""`vscore eval`: every metric on small hand-made fixtures, computed by hand below and asserted to 1e-9."""

from __future__ import annotations

import csv
import json
import math

import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from pipeline.tools.evaluate import (
    average_ranks, evaluate, judge, mj_remap_tp, mj_remap_v, normalise_preference, pearson, round_clamp, spearman,
)
from pipeline.schema import rows_to_table

TOL = 1e-9


def approx(x):
    return pytest.approx(x, abs=TOL, rel=0)


def score_row(key, soft=None, hard=None, status="ok", run_id="r1"):
    soft = soft or (None, None, None)
    hard = hard or tuple(None if s is None else round_clamp(s) for s in soft)
    return {"row_id": f"id-{key}", "run_id": run_id, "shard_group": "g00000", "key": key, "shard": "s.tar",
            "prompt": "p", "status": status,
            "visual_quality": hard[0], "text_alignment": hard[1], "physical_consistency": hard[2],
            "visual_quality_soft": soft[0], "text_alignment_soft": soft[1], "physical_consistency_soft": soft[2]}


def write_scores(path, rows):
    pq.write_table(rows_to_table(rows), path)
    return str(path)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return str(path)


# --------------------------------------------------------------------------- primitives

def test_round_clamp_is_pythons_banker_rounding():
    assert [round_clamp(x) for x in (0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 0.49, 2.51, 7.0, -3.0)] == [1, 2, 2, 4, 4, 5, 1, 3, 5, 1]


def test_mj_remaps():
    assert [mj_remap_v(s) for s in range(1, 6)] == [0, 0, 1, 1, 2]
    assert [mj_remap_tp(s) for s in range(1, 6)] == [0, 1, 1, 2, 2]


def test_pearson_spearman_by_hand():
    # x=[1,2,3,4], y=[2,4,5,9]: dx=[-1.5,-.5,.5,1.5], y mean 5, dy=[-3,-1,0,4]
    # Sxy = 4.5+0.5+0+6 = 11, Sxx = 5, Syy = 9+1+0+16 = 26 -> r = 11/sqrt(130)
    assert pearson([1, 2, 3, 4], [2, 4, 5, 9]) == approx(11 / math.sqrt(130))
    # ranks with ties: [10, 20, 20, 30, 20] -> 10:1, the three 20s share (2+3+4)/3 = 3, 30:5
    assert list(average_ranks([10, 20, 20, 30, 20])) == [1, 3, 3, 5, 3]
    # spearman: x=[1,2,3,4] ranks [1,2,3,4]; y=[5,5,1,7] ranks [2.5,2.5,1,4]
    # drx=[-1.5,-.5,.5,1.5], dry=[0,0,-1.5,1.5] (mean 2.5): S = 0+0-0.75+2.25 = 1.5, Sxx=5, Syy=4.5
    assert spearman([1, 2, 3, 4], [5, 5, 1, 7]) == approx(1.5 / math.sqrt(22.5))
    assert pearson([3, 3, 3], [1, 2, 3]) is None  # constant side: undefined
    assert pearson([1], [2]) is None
    assert spearman([1, 2], [2, 1]) == approx(-1.0)


def test_judge_and_labels():
    assert judge(3.0, 3.0005, True, 0.001) == "same"
    assert judge(3.0, 3.0005, False, 0.001) == "B"
    assert judge(3.0, 3.0, False, 0.001) == "same"
    assert judge(4.0, 3.0, True, 0.5) == "A" and judge(3.0, 3.4, True, 0.5) == "same"
    assert [normalise_preference(v) for v in ("A", "b", " Same ", 1, "2", 2.0, "Video 1 better", "Video 2 better",
                                              "tie", "leftvote", None, "")] == \
        ["A", "B", "same", "A", "B", "B", "A", "B", "same", "A", None, None]
    with pytest.raises(ValueError):
        normalise_preference("maybe")


# --------------------------------------------------------------------------- point, generic

# five evaluated items k1..k5 (soft scores x, labels g), plus three missing ones:
# k6 absent from the scores, k7 an error row, k8 ok but with a null soft score (hard scores present).
POINT_SOFT = {
    "k1": (2.5, 1.2, 4.5),
    "k2": (3.5, 2.0, 1.49),
    "k3": (0.5, 4.4, 2.51),
    "k4": (5.5, 4.6, 3.0),
    "k5": (3.0, 2.8, 5.0),
}
POINT_GT = {
    "k1": (2, 1, 4),
    "k2": (4, 4, 1),
    "k3": (1, 4, 3),
    "k4": (5, 4, 2),
    "k5": (2, 3, 5),
    "k6": (3, 3, 3),
    "k7": (3, 3, 3),
    "k8": (3, 3, 3),
}


@pytest.fixture
def point_files(tmp_path):
    rows = [score_row(k, s) for k, s in POINT_SOFT.items()]
    rows.append(score_row("k7", status="error"))
    rows.append(score_row("k8", soft=(None, 3.1, 3.0), hard=(3, 3, 3)))
    rows.append(score_row("unlabelled", (1.0, 1.0, 1.0)))
    scores = write_scores(tmp_path / "scores.parquet", rows)
    labels = write_jsonl(tmp_path / "labels.jsonl", [
        {"key": k, "visual_score": g[0], "t2v_score": g[1], "phy_score": g[2]} for k, g in POINT_GT.items()])
    return scores, labels


def test_point_generic_by_hand(point_files):
    scores, labels = point_files
    r = evaluate(scores, labels, kind="point")
    # --- visual quality: x = [2.5, 3.5, 0.5, 5.5, 3.0], g = [2, 4, 1, 5, 2]
    # round_clamp: round(2.5)=2, round(3.5)=4, round(0.5)=0 -> 1, round(5.5)=6 -> 5, 3 -> [2, 4, 1, 5, 3]
    # exact: 2=2, 4=4, 1=1, 5=5, 3!=2 -> 4/5 = 80 (round-half-up would give 3/5)
    # relaxed: |d| = [0,0,0,0,1] -> 5/5 = 100
    # PLCC: mean x = 15/5 = 3, dx = [-.5,.5,-2.5,2.5,0]; mean g = 14/5 = 2.8, dg = [-.8,1.2,-1.8,2.2,-.8]
    #   Sxy = .4+.6+4.5+5.5+0 = 11, Sxx = .25+.25+6.25+6.25+0 = 13, Sgg = .64+1.44+3.24+4.84+.64 = 10.8
    #   r = 11 / sqrt(140.4)
    # SRCC: ranks x = [2,4,1,5,3], ranks g = [2.5,4,1,5,2.5]; drx = [-1,1,-2,2,0], drg = [-.5,1,-2,2,-.5]
    #   S = .5+1+4+4+0 = 9.5, Sxx = 10, Sgg = 9.5 -> r = 9.5/sqrt(95) = sqrt(0.95)
    v = r["visual_quality"]
    assert v["acc"] == approx(80.0) and v["relaxed_acc"] == approx(100.0)
    assert v["plcc"] == approx(100 * 11 / math.sqrt(140.4))
    assert v["srcc"] == approx(100 * math.sqrt(0.95))
    assert v["n"] == 5
    # --- text alignment: x = [1.2, 2.0, 4.4, 4.6, 2.8], g = [1, 4, 4, 4, 3]
    # round_clamp = [1, 2, 4, 5, 3]: exact 1=1, 2!=4, 4=4, 5!=4, 3=3 -> 3/5 = 60
    # relaxed |d| = [0,2,0,1,0] -> 4/5 = 80
    # PLCC: mean x = 15/5 = 3, dx = [-1.8,-1,1.4,1.6,-.2]; mean g = 16/5 = 3.2, dg = [-2.2,.8,.8,.8,-.2]
    #   Sxy = 3.96-.8+1.12+1.28+.04 = 5.6, Sxx = 3.24+1+1.96+2.56+.04 = 8.8, Sgg = 4.84+.64*3+.04 = 6.8
    #   r = 5.6 / sqrt(59.84)
    # SRCC: ranks x = [1,2,4,5,3], ranks g = [1,4,4,4,2]; drx = [-2,-1,1,2,0], drg = [-2,1,1,1,-1]
    #   S = 4-1+1+2+0 = 6, Sxx = 10, Sgg = 8 -> r = 6/sqrt(80)
    t = r["text_alignment"]
    assert t["acc"] == approx(60.0) and t["relaxed_acc"] == approx(80.0)
    assert t["plcc"] == approx(100 * 5.6 / math.sqrt(59.84))
    assert t["srcc"] == approx(100 * 6 / math.sqrt(80))
    # --- physical consistency: x = [4.5, 1.49, 2.51, 3.0, 5.0], g = [4, 1, 3, 2, 5]
    # round_clamp = [4 (half to even), 1, 3, 3, 5]: exact 4,1,3 ok, 3!=2, 5 ok -> 4/5 = 80; relaxed 5/5 = 100
    # PLCC: mean x = 16.5/5 = 3.3, dx = [1.2,-1.81,-.79,-.3,1.7]; mean g = 3, dg = [1,-2,0,-1,2]
    #   Sxy = 1.2+3.62+0+.3+3.4 = 8.52, Sxx = 1.44+3.2761+.6241+.09+2.89 = 8.3202, Sgg = 10
    #   r = 8.52 / sqrt(83.202)
    # SRCC: ranks x = [4,1,2,3,5], ranks g = [4,1,3,2,5]; d = [1,-2,-1,0,2] and [1,-2,0,-1,2]
    #   S = 1+4+0+0+4 = 9, Sxx = Sgg = 10 -> 0.9
    p = r["physical_consistency"]
    assert p["acc"] == approx(80.0) and p["relaxed_acc"] == approx(100.0)
    assert p["plcc"] == approx(100 * 8.52 / math.sqrt(83.202))
    assert p["srcc"] == approx(90.0)
    # --- averages over the three dimensions
    assert r["avg"]["acc"] == approx((80 + 60 + 80) / 3)
    assert r["avg"]["relaxed_acc"] == approx((100 + 80 + 100) / 3)
    assert r["avg"]["plcc"] == approx((v["plcc"] + t["plcc"] + p["plcc"]) / 3)
    assert r["avg"]["srcc"] == approx((100 * math.sqrt(0.95) + 100 * 6 / math.sqrt(80) + 90) / 3)
    # --- counts: 8 labelled, 5 evaluated, 3 missing (one per reason), never silently dropped
    assert (r["labels"], r["n"], r["missing"]) == (8, 5, 3)
    assert r["missing_by_reason"] == {"absent": 1, "error": 1, "null_score": 1}
    assert sorted(r["missing_keys"]) == ["k6", "k7", "k8"]
    assert "overall" not in r


def test_point_hard_scores(point_files):
    scores, labels = point_files
    r = evaluate(scores, labels, kind="point", use="hard")
    # hard = round_clamp(soft) for k1..k5 ([2,4,1,5,3] etc.) plus k8 = (3,3,3) against g = (3,3,3):
    # v: 4/5 right + k8 right -> 5/6;  t: 3/5 + 1 -> 4/6;  p: 4/5 + 1 -> 5/6
    assert r["visual_quality"]["acc"] == approx(500 / 6)
    assert r["text_alignment"]["acc"] == approx(400 / 6)
    assert r["physical_consistency"]["acc"] == approx(500 / 6)
    # relaxed: v 6/6, t 5/6 (k2 off by 2), p 6/6
    assert r["text_alignment"]["relaxed_acc"] == approx(500 / 6)
    assert (r["n"], r["missing"], r["missing_by_reason"]) == (6, 2, {"absent": 1, "error": 1})


def test_point_csv_labels_and_column_mapping(point_files, tmp_path):
    scores, _ = point_files
    labels = write_csv(tmp_path / "l.csv", [{"name_col": k, "A": g[0], "B": g[1], "C": g[2]} for k, g in POINT_GT.items()])
    r = evaluate(scores, labels, kind="point",
                 label_columns={"key": "name_col", "visual_quality": "A", "text_alignment": "B", "physical_consistency": "C"})
    assert r["visual_quality"]["acc"] == approx(80.0) and r["avg"]["acc"] == approx((80 + 60 + 80) / 3)
    assert r["missing"] == 3


# --------------------------------------------------------------------------- point, MJ-Bench-Video

def test_point_mjbench_remap_by_hand(tmp_path):
    soft = {"m1": (1.6, 1.4, 4.4), "m2": (3.5, 2.5, 3.0), "m3": (5.0, 4.6, 5.2), "m4": (2.6, 1.0, 1.5)}
    gt = {"m1": (0, 0, 1, 1), "m2": (1, 2, 1, 2), "m3": (2, 2, 2, 2), "m4": (0, 0, 0, 0)}  # fineness, alignment, consistency, total
    scores = write_scores(tmp_path / "s.parquet", [score_row(k, s) for k, s in soft.items()])
    labels = write_jsonl(tmp_path / "mj.jsonl", [
        {"key": k, "fineness": g[0], "alignment": g[1], "consistency": g[2], "total_score": g[3]} for k, g in gt.items()])
    r = evaluate(scores, labels, benchmark="mjbench")
    assert r["kind"] == "point"
    # round_clamp then remap; v: (1,2)->0 (3,4)->1 5->2; t,p and overall: 1->0 (2,3)->1 (4,5)->2
    # m1: v 1.6->2->0 (gt 0 ok), t 1.4->1->0 (0 ok), p 4.4->4->2 (1 no); overall int((2+1+4)/3)=2->1 (1 ok)
    # m2: v 3.5->4->1 (1 ok), t 2.5->2->1 (2 no), p 3->3->1 (1 ok);     overall int((4+2+3)/3)=3->1 (2 no)
    # m3: v 5->5->2 (2 ok), t 4.6->5->2 (2 ok), p 5.2->5->2 (2 ok);     overall int(15/3)=5->2 (2 ok)
    # m4: v 2.6->3->1 (0 no), t 1->1->0 (0 ok), p 1.5->2->1 (0 no);     overall int((3+1+2)/3)=2->1 (0 no)
    #   (overall from the raw floats, (2.6+1+1.5)/3 = 1.7 -> 1 -> 0, would be right: the official code uses the ints)
    # acc v = 3/4, t = 3/4, p = 2/4, overall = 2/4; relaxed all 100 (every |d| <= 1)
    assert r["visual_quality"]["acc"] == approx(75.0)
    assert r["text_alignment"]["acc"] == approx(75.0)
    assert r["physical_consistency"]["acc"] == approx(50.0)
    assert r["overall"]["acc"] == approx(50.0)
    assert r["avg"]["acc"] == approx((75 + 75 + 50) / 3)
    assert r["visual_quality"]["relaxed_acc"] == approx(100.0) and r["overall"]["relaxed_acc"] == approx(100.0)
    # PLCC v on the raw floats: x = [1.6,3.5,5.0,2.6] (mean 3.175), g = [0,1,2,0] (mean .75)
    #   dx = [-1.575,.325,1.825,-.575], dg = [-.75,.25,1.25,-.75]
    #   Sxy = 1.18125+.08125+2.28125+.43125 = 3.975, Sxx = 2.480625+.105625+3.330625+.330625 = 6.2475, Sgg = 2.75
    assert r["visual_quality"]["plcc"] == approx(100 * 3.975 / math.sqrt(6.2475 * 2.75))
    # overall PLCC: v+t+p raw = [7.4, 9.0, 14.8, 5.1] (mean 9.075) vs total = [1,2,2,0] (mean 1.25)
    #   dx = [-1.675,-.075,5.725,-3.975], dg = [-.25,.75,.75,-1.25]
    #   Sxy = .41875-.05625+4.29375+4.96875 = 9.625
    #   Sxx = 2.805625+.005625+32.775625+15.800625 = 51.3875, Sgg = 2.75
    assert r["overall"]["plcc"] == approx(100 * 9.625 / math.sqrt(51.3875 * 2.75))
    # overall SRCC: ranks x = [2,3,4,1], ranks g = [2,3.5,3.5,1]; drx = [-.5,.5,1.5,-1.5], drg = [-.5,1,1,-1.5]
    #   S = .25+.5+1.5+2.25 = 4.5, Sxx = 5, Sgg = .25+1+1+2.25 = 4.5 -> 4.5/sqrt(22.5)
    assert r["overall"]["srcc"] == approx(100 * 4.5 / math.sqrt(22.5))


# --------------------------------------------------------------------------- point, VideoPhy2

def test_point_videophy2_mapping_by_hand(tmp_path):
    # v soft is null for q3: VideoPhy2 compares t and p only, so q3 still counts
    soft = {"q1": (3.0, 4.5, 2.5), "q2": (3.0, 3.0, 0.5), "q3": (None, 1.5, 4.5)}
    scores = write_scores(tmp_path / "s.parquet", [score_row(k, s, hard=(3, 3, 3)) for k, s in soft.items()])
    labels = write_csv(tmp_path / "videophy2.csv", [
        {"key": "q1", "sa": 4, "pc": 3}, {"key": "q2", "sa": 5, "pc": 1}, {"key": "q3", "sa": 3, "pc": 5},
        {"key": "q9", "sa": 1, "pc": 1}])
    r = evaluate(scores, labels, benchmark="videophy2")
    assert "visual_quality" not in r
    # SA -> t: x = [4.5, 3.0, 1.5] -> [4 (half even), 3, 2] vs g = [4, 5, 3]: exact 1/3, relaxed |d|=[0,2,1] 2/3
    #   PLCC: dx = [1.5,0,-1.5] (mean 3), dg = [0,1,-1] (mean 4): Sxy = 1.5, Sxx = 4.5, Sgg = 2 -> 1.5/3 = .5
    #   SRCC: ranks [3,2,1] vs [2,3,1]: d = [1,0,-1], [0,1,-1] -> S = 1, Sxx = Sgg = 2 -> .5
    t = r["text_alignment"]
    assert (t["acc"], t["relaxed_acc"]) == (approx(100 / 3), approx(200 / 3))
    assert (t["plcc"], t["srcc"]) == (approx(50.0), approx(50.0))
    # PC -> p: x = [2.5, 0.5, 4.5] -> [2, 1 (0 clamped), 4] vs g = [3, 1, 5]: exact 1/3, relaxed 3/3
    #   PLCC: dx = [0,-2,2] (mean 2.5), dg = [0,-2,2] (mean 3) -> 1; SRCC 1
    p = r["physical_consistency"]
    assert (p["acc"], p["relaxed_acc"], p["plcc"], p["srcc"]) == (approx(100 / 3), approx(100.0), approx(100.0), approx(100.0))
    # avg over t and p only
    assert r["avg"] == {"acc": approx(100 / 3), "relaxed_acc": approx(250 / 3), "plcc": approx(75.0), "srcc": approx(75.0)}
    assert (r["n"], r["missing"], r["missing_by_reason"]) == (3, 1, {"absent": 1})


# --------------------------------------------------------------------------- pairwise

PAIR_SOFT = {
    "a": (3.0, 4.0, 3.0),     # sum 10.0
    "b": (3.0005, 3.0, 4.0),  # sum 10.0005
    "c": (2.0, 4.0, 4.0),     # sum 10.0
    "d": (4.0, 2.0, 2.0),     # sum 8.0
}


@pytest.fixture
def pair_scores(tmp_path):
    rows = [score_row(k, s) for k, s in PAIR_SOFT.items()] + [score_row("e", status="error")]
    return write_scores(tmp_path / "pairs.parquet", rows)


VGRB = [  # VideoGen-RewardBench layout: path_A, path_B, VQ (v), TA (t), Overall (v+t+p)
    {"path_A": "videos/a.mp4", "path_B": "videos/b.mp4", "VQ": "same", "TA": "A", "Overall": "same"},  # 1
    {"path_A": "videos/a.mp4", "path_B": "videos/c.mp4", "VQ": "A", "TA": "same", "Overall": "B"},     # 2
    {"path_A": "videos/c.mp4", "path_B": "videos/d.mp4", "VQ": "B", "TA": "B", "Overall": "A"},        # 3
    {"path_A": "videos/d.mp4", "path_B": "videos/b.mp4", "VQ": "A", "TA": "B", "Overall": "B"},        # 4
    {"path_A": "videos/a.mp4", "path_B": "videos/e.mp4", "VQ": "A", "TA": "A", "Overall": "A"},        # 5 e: error row
    {"path_A": "videos/f.mp4", "path_B": "videos/a.mp4", "VQ": "A", "TA": "A", "Overall": "A"},        # 6 f: absent
    {"path_A": "videos/b.mp4", "path_B": "videos/a.mp4", "VQ": "A", "TA": "B", "Overall": "A"},        # 7
]


def test_pairwise_videogen_rewardbench_with_ties_by_hand(pair_scores, tmp_path):
    labels = write_csv(tmp_path / "vgrb.csv", VGRB)
    r = evaluate(pair_scores, labels, benchmark="videogen-rewardbench", ties=True)
    assert r["kind"] == "pairwise" and r["tie_band"] == 0.001
    # with ties, band 0.001: same iff |s_a - s_b| <= 0.001. Pairs 5, 6 missing -> 5 pairs evaluated.
    # VQ (v): 1: 3-3.0005=-.0005 -> same (gt same) ok; 2: 3>2 A ok; 3: 2<4 B ok; 4: 4>3.0005 A ok;
    #         7: .0005 -> same (gt A) wrong -> 4/5 = 80
    # TA (t): 1: 4>3 A ok; 2: 4=4 same ok; 3: 4>2 A (gt B) wrong; 4: 2<3 B ok; 7: 3<4 B ok -> 4/5 = 80
    # Overall (v+t+p): 1: 10-10.0005 -> same ok; 2: 10=10 same (gt B) wrong; 3: 10>8 A ok;
    #         4: 8<10.0005 B ok; 7: .0005 -> same (gt A) wrong -> 3/5 = 60
    assert r["visual_quality"]["acc"] == approx(80.0) and r["visual_quality"]["n"] == 5
    assert r["text_alignment"]["acc"] == approx(80.0)
    assert r["overall"]["acc"] == approx(60.0) and r["overall"]["score"] == "sum"
    assert (r["pairs"], r["n"], r["missing"]) == (7, 5, 2)
    assert r["missing_by_reason"] == {"error": 1, "absent": 1}
    assert sorted(r["missing_keys"]) == ["e", "f"]


def test_pairwise_videogen_rewardbench_without_ties_by_hand(pair_scores, tmp_path):
    labels = write_csv(tmp_path / "vgrb.csv", VGRB)
    r = evaluate(pair_scores, labels, benchmark="videogen-rewardbench", ties=False)
    assert r["tie_band"] is None
    # without ties: GT "same" pairs skipped; prediction by plain comparison, "same" only on exact equality
    # VQ: skip 1; 2 A ok; 3 B ok; 4 A ok; 7: 3.0005>3 A ok -> 4/4 = 100
    # TA: skip 2; 1 A ok; 3 A wrong; 4 B ok; 7 B ok -> 3/4 = 75
    # Overall: skip 1; 2: 10 == 10 -> same (gt B) wrong; 3 ok; 4 ok; 7: 10.0005 > 10 A ok -> 3/4 = 75
    assert (r["visual_quality"]["acc"], r["visual_quality"]["n"], r["visual_quality"]["skipped_same"]) == (approx(100.0), 4, 1)
    assert (r["text_alignment"]["acc"], r["text_alignment"]["skipped_same"]) == (approx(75.0), 1)
    assert (r["overall"]["acc"], r["overall"]["n"]) == (approx(75.0), 4)
    assert r["missing"] == 2


def test_pairwise_t2vqa_mean_and_1_2_labels_by_hand(pair_scores, tmp_path):
    labels = write_jsonl(tmp_path / "t2vqa.jsonl", [
        {"video1": "a", "video2": "c", "preference": "same"},  # means 10/3 == 10/3
        {"video1": "a", "video2": "b", "preference": "2"},     # 10/3 - 10.0005/3 = -.000167
        {"video1": "d", "video2": "a", "preference": "2"},     # 8/3 < 10/3
        {"video1": "c", "video2": "d", "preference": 1},       # 10/3 > 8/3
        {"video1": "a", "video2": "zz", "preference": "1"},    # zz absent
    ])
    r = evaluate(pair_scores, labels, benchmark="t2vqa")
    # with ties: same ok; -.000167 -> same (gt 2) wrong; 2 ok; 1 ok -> 3/4 = 75
    assert r["overall"]["acc"] == approx(75.0) and r["overall"]["score"] == "mean"
    assert (r["n"], r["missing"]) == (4, 1)
    r = evaluate(pair_scores, labels, benchmark="t2vqa", ties=False)
    # without ties: skip the same pair; -.000167 < 0 -> 2 ok; ok; ok -> 3/3 = 100
    assert (r["overall"]["acc"], r["overall"]["n"], r["overall"]["skipped_same"]) == (approx(100.0), 3, 1)


def test_pairwise_mjbench_and_generic(pair_scores, tmp_path):
    labels = write_jsonl(tmp_path / "mj.jsonl", [
        {"video_0_path": "x/c.mp4", "video_1_path": "x/d.mp4", "overall_preference": "Video 1 better"},  # ok
        {"video_0_path": "x/a.mp4", "video_1_path": "x/c.mp4", "overall_preference": "Same"},            # ok
        {"video_0_path": "x/d.mp4", "video_1_path": "x/a.mp4", "overall_preference": "Video 1 better"},  # wrong
    ])
    r = evaluate(pair_scores, labels, benchmark="mjbench", kind="pairwise")
    assert r["overall"]["acc"] == approx(200 / 3)
    # generic with --compare p: p scores a=3, b=4, c=4, d=2; labels A/B/same
    labels = write_jsonl(tmp_path / "g.jsonl", [
        {"key_a": "a", "key_b": "b", "label": "B"},     # 3<4 ok
        {"key_a": "b", "key_b": "c", "label": "same"},  # 4=4 ok
        {"key_a": "d", "key_b": "a", "label": "A"},     # 2<3 wrong
        {"key_a": "d", "key_b": "a", "label": None},    # no label: counted, not scored
    ])
    r = evaluate(pair_scores, labels, compare="p")
    assert (r["kind"], r["overall"]["acc"], r["overall"]["n"], r["overall"]["label_missing"]) == ("pairwise", approx(200 / 3), 3, 1)


def test_pairwise_hard_scores_default_band_half(tmp_path):
    # hard integers: the official int method uses a 0.5 band. mean a = (3+4+3)/3, mean b = (3+3+3)/3 = 3
    scores = write_scores(tmp_path / "s.parquet", [score_row("a", hard=(3, 4, 3)), score_row("b", hard=(3, 3, 3))])
    labels = write_jsonl(tmp_path / "l.jsonl", [{"key_a": "a", "key_b": "b", "label": "same"}])
    r = evaluate(scores, labels, use="hard")
    assert r["tie_band"] == 0.5 and r["overall"]["acc"] == approx(100.0)  # 1/3 <= .5 -> same
    r = evaluate(scores, labels, use="hard", tie_band=0.001)
    assert r["overall"]["acc"] == approx(0.0)
    assert evaluate(scores, labels, use="soft")["missing_by_reason"] == {"null_score": 2}


def test_duplicate_keys_rejected_unless_run_selected(tmp_path):
    scores = write_scores(tmp_path / "s.parquet", [score_row("a", (3.0, 3.0, 3.0), run_id="r1"),
                                                   score_row("a", (1.0, 1.0, 1.0), run_id="r2")])
    labels = write_jsonl(tmp_path / "l.jsonl", [{"key": "a", "visual_quality": 3}])
    with pytest.raises(ValueError, match="duplicate"):
        evaluate(scores, labels)
    assert evaluate(scores, labels, run_id="r1")["visual_quality"]["acc"] == approx(100.0)


# --------------------------------------------------------------------------- CLI round trip

def test_cli_eval_json(point_files, capsys):
    scores, labels = point_files
    assert main(["eval", "--scores", scores, "--labels", labels, "--kind", "point", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for d in ("visual_quality", "text_alignment", "physical_consistency", "avg"):
        assert set(out[d]) >= {"acc", "relaxed_acc", "plcc", "srcc"}
    assert out["visual_quality"]["acc"] == approx(80.0)
    assert (out["n"], out["missing"]) == (5, 3)
    assert main(["eval", "--scores", scores, "--labels", labels]) == 0  # human-readable table
    text = capsys.readouterr().out
    assert "visual_quality" in text and "80.00" in text and "3 missing" in text


def test_cli_eval_pairwise_no_ties(pair_scores, tmp_path, capsys):
    labels = write_csv(tmp_path / "vgrb.csv", VGRB)
    assert main(["eval", "--scores", pair_scores, "--labels", labels, "--benchmark", "videogen-rewardbench",
                 "--no-ties", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["overall"]["acc"] == approx(75.0) and out["ties"] is False


def test_skipped_rows_are_missing_with_their_own_reason():
    """A row the prefilter skipped (status skipped) is neither a score nor an error."""
    from pipeline.tools.evaluate import ScoreIndex

    idx = ScoreIndex(use="hard", rows={"ok": ("ok", (4, 3, 2)), "skip": ("skipped", (None, None, None)),
                                       "err": ("error", (None, None, None))})
    assert idx.lookup("ok") == ({"visual_quality": 4.0, "text_alignment": 3.0, "physical_consistency": 2.0}, None)
    assert idx.lookup("skip") == (None, "skipped")
    assert idx.lookup("err") == (None, "error")
