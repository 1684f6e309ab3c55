"""The prefilter in a real run (local Ray, local shards, the fixed-output engine recording what reaches it):
real clips are scored; still, black, very short and small clips are skipped and never reach the engine; every
input row comes out once (skipped + ok + error = input); the summary, the commit markers (resume), the report
and best-of-n count skipped rows as neither ok nor errors; a rerun resumes; another prefilter is another run."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from pipeline.config import ScoreConfig
from pipeline.run import stats
from pipeline.run.job import run
from pipeline.run.resume import load_state
from pipeline.stages.prefilter import skip_conditions
from pipeline.tools.best_of_n import select_best
from pipeline.tools.pack import pack
from pipeline.tools.report import build_report, load_scores
from tests.signal_media import black_clip, moving_clip, real_clips, still_clip

SLEEP_S = 0.05


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """4 real clips (one per source folder at least) and 5 generated ones, all under one prompt, 3 per shard."""
    src = tmp_path_factory.mktemp("src")
    reals = real_clips()
    picked = [reals[0], reals[4], reals[10], reals[13]]
    clips = {f"real_{p.stem}": p.read_bytes() for p in picked}
    clips.update(gen_still=still_clip(), gen_black=black_clip(), gen_short=moving_clip(seconds=0.5),
                 gen_small=moving_clip(width=320, height=200), gen_corrupt=b"\x00\x00\x00\x18ftypisom" + bytes(range(256)) * 40)
    lines = []
    for name, data in clips.items():
        (src / f"{name}.mp4").write_bytes(data)
        lines.append(json.dumps({"file": f"{name}.mp4", "prompt": "one prompt for all"}))
    (src / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path_factory.mktemp("shards")
    pack(src, str(out), shard_size=3)
    return out, len(clips)


def _cfg(shards_dir: Path, out: Path, seen: Path, preset: str = "corpus") -> ScoreConfig:
    return ScoreConfig.model_validate({
        "input": {"shards": f"{shards_dir}/shard-*.tar", "samples_per_block": 2},
        "decode": {"actors": 1, "num_cpus": 0.25, "batch_size": 3},
        "prefilter": {"preset": preset},
        "engine": {"kind": "pipeline.engines.fixed:FixedOutputEngine", "engine_kwargs": {"record_to": str(seen), "sleep_s": SLEEP_S},
                   "actors": 1, "num_gpus": 0, "num_cpus": 0.25, "batch_size": 4, "batches_in_flight": 1},
        "output": {"path": str(out), "min_rows_per_file": 2},
        "ray": {"progress_bars": False},
    })


def _rows(out: Path) -> list[dict]:
    return pads.dataset(out, format="parquet", partitioning="hive").to_table().to_pylist()


def test_prefilter_run(ray_local, shards, tmp_path):  # noqa: F811
    shards_dir, n_in = shards
    out, seen = tmp_path / "scores", tmp_path / "seen"
    cfg = _cfg(shards_dir, out, seen)
    summary = run(cfg, progress_every_s=2)
    rows = {r["key"]: r for r in _rows(out)}
    # conservation: one row per input sample, each ok, error or skipped
    assert len(rows) == n_in == summary["rows_in"] == summary["rows_out"]
    assert summary["ok"] + summary["errors"] + summary["skipped"] == n_in
    status = {k: r["status"] for k, r in rows.items()}
    assert {k for k, s in status.items() if s == "ok"} == {k for k in rows if k.startswith("real_")}
    assert {k for k, s in status.items() if s == "skipped"} == {"gen_still", "gen_black", "gen_short", "gen_small"}
    assert status["gen_corrupt"] == "error" and summary["errors"] == 1 and summary["skipped"] == 4
    assert rows["gen_still"]["error"] == "motion >= 0.5" and rows["gen_short"]["error"] == "duration_s >= 1"
    assert rows["gen_small"]["error"] == "least(src_width, src_height) >= 240"
    assert rows["gen_black"]["error"] == "motion >= 0.5; blank_fraction < 0.5"
    # a skipped row never reached the engine; every ok row did
    reached = {p.name for p in seen.iterdir()}
    assert reached == {r["row_id"] for r in rows.values() if r["status"] == "ok"}
    for k in ("gen_still", "gen_black", "gen_short", "gen_small"):
        r = rows[k]
        assert r["error_stage"] == "prefilter" and r["score_s"] is None and r["raw_output"] is None
        assert r["motion"] is not None and r["phash"] is not None and r["src_width"] > 0
    assert all(rows["gen_corrupt"][c] is None for c in ("fps", "motion", "phash", "src_width"))
    for k, r in rows.items():
        if k.startswith("real_"):
            assert r["motion"] >= 0.5 and r["blank_fraction"] < 0.5 and len(r["phash"]) == 16 and r["score_s"] >= SLEEP_S
    # what it saved: skipped rows x the engine seconds per scored video of this run
    scored = [r["score_s"] for r in rows.values() if r["score_s"] is not None]
    per_video = sum(scored) / len(scored)
    pre = summary["prefilter"]
    assert pre["expression"] and pre["skipped"] == 4
    assert pre["engine_s_per_video"] == pytest.approx(per_video, abs=1e-4)
    assert pre["gpu_s_saved"] == pytest.approx(4 * per_video, abs=0.01)
    want_reasons: dict[str, int] = {}
    for r in rows.values():
        if r["status"] == "skipped":
            for c in skip_conditions(r["error"]):
                want_reasons[c] = want_reasons.get(c, 0) + 1
    assert pre["skip_reasons"] == want_reasons == {"motion >= 0.5": 2, "blank_fraction < 0.5": 1, "duration_s >= 1": 1,
                                                   "least(src_width, src_height) >= 240": 1}
    # committed: the markers count skipped rows; the quarantine holds the error only
    totals = load_state(cfg).totals()
    assert totals["skipped"] == 4 and totals["rows"] == n_in and totals["errors_by_stage"] == {"decode": 1}
    quarantined = pads.dataset(str(out) + "-quarantine", format="parquet", partitioning="hive").to_table().to_pylist()
    assert [r["key"] for r in quarantined] == ["gen_corrupt"]
    # the report shows the skip reasons and the saving
    table, summaries = load_scores(str(out))
    page, _, facts = build_report(table, summaries)
    assert facts["skipped"] == 4 and facts["errors"] == 1 and facts["ok"] == 4
    assert {g["condition"]: g["rows"] for g in facts["prefilter"]["skip_reasons"]} == want_reasons
    assert facts["prefilter"]["gpu_s_saved"] == pytest.approx(4 * per_video, rel=1e-6)
    assert "GPU-seconds not spent" in page and "least(src_width, src_height) &gt;= 240" in page
    # best-of-n: skipped rows are counted apart from errors
    (group,) = select_best(table.to_pylist())
    assert (group["skipped_prefilter"], group["skipped_error"], group["valid_count"]) == (4, 1, 4)
    # the same expression after the fact (`vscore filter --where`, same column names) keeps exactly the scored rows
    from pipeline.tools.filter import filter_scores

    kept = filter_scores(str(out), str(tmp_path / "kept.jsonl"), pre["expression"])
    assert kept["kept"] == 4 and kept["dropped"] == n_in - 4
    assert {json.loads(l)["key"] for l in (tmp_path / "kept.jsonl").read_text().splitlines()} == {
        k for k, r in rows.items() if r["status"] == "ok"}
    # a rerun resumes: nothing new, the skipped rows stay committed
    again = run(cfg, progress_every_s=60)
    assert again["rows_this_invocation"] == 0 and again["skipped"] == 4 and again["rows_out"] == n_in
    assert len(_rows(out)) == n_in
    # another prefilter is another run: without one, every decodable clip reaches the engine
    plain = run(_cfg(shards_dir, out, tmp_path / "seen2", preset="none"), progress_every_s=60)
    assert plain["run_id"] != summary["run_id"] and plain["skipped"] == 0 and plain["ok"] == n_in - 1
    assert plain["prefilter"]["gpu_s_saved"] == 0 and len(list((tmp_path / "seen2").iterdir())) == n_in - 1


def test_run_stats_count_prefiltered_rows(ray_local):  # noqa: F811
    import ray

    handle = stats.create("vscore-stats-test-prefilter", "r")
    handle.add.remote({"rows_scored": 5, "rows_ok": 2, "rows_prefiltered": 3, "skipped:motion >= 0.5": 3,
                       "engine_s": 0.5, "engine_rows": 2})
    snap = ray.get(handle.snapshot.remote())
    ray.kill(handle)
    assert snap["rows_prefiltered"] == 3 and snap["skipped:motion >= 0.5"] == 3
    p = stats.progress(snap, total_shards=1)
    assert p["prefiltered"] == 3 and p["gpu_s_saved"] == pytest.approx(3 * 0.25)
    assert stats.gpu_seconds_saved(3, 0.0, 0) is None


def test_score_stage_passes_skipped_rows_untouched(tmp_path):
    """Unit level: a skipped row (and its signals) goes through the scoring stage unchanged, never to the engine,
    and is counted as skipped per condition, not as an error."""
    import numpy as np

    from pipeline.config import load_config
    from pipeline.engines.base import EngineOutput
    from pipeline.schema import OUTPUT_SCHEMA
    from pipeline.stages import score as score_mod

    class Recording:
        tokenizer = None

        def __init__(self):
            self.seen = []

        def render_prompt(self, text):
            return text

        def generate(self, reqs):
            self.seen += [r.request_id for r in reqs]
            return [EngineOutput(request_id=r.request_id, text="visual quality: 3 text-to-video alignment: 3 "
                                 "physical/common-sense consistency: 3", token_ids=[], prompt_tokens=5, output_tokens=5) for r in reqs]

    cfg = load_config(None, ["input.shards=x", f"output.path={tmp_path}", "prefilter.preset=corpus"])
    eng = Recording()
    stage = score_mod.ScoreStage(cfg, engine=eng)
    n = 3
    status = ["ok", "skipped", "error"]
    error = [None, "motion >= 0.5; blank_fraction < 0.5", "boom"]
    batch = {
        "row_id": np.array(["r0", "r1", "r2"], dtype=object), "key": np.array(["k0", "k1", "k2"], dtype=object),
        "shard": np.array(["s"] * n, dtype=object), "shard_group": np.array(["g"] * n, dtype=object),
        "prompt": np.array(["p"] * n, dtype=object), "meta_json": np.array([None] * n, dtype=object),
        "status": np.array(status, dtype=object), "error_stage": np.array([None, "prefilter", "decode"], dtype=object),
        "error": np.array(error, dtype=object), "num_frames": np.array([2, 4, 0]), "width": np.array([56, 56, 0]),
        "height": np.array([28, 28, 0]), "duration_s": np.array([1.0, 5.0, 0.0]), "decode_s": np.array([0.1] * n),
        "frames": [np.zeros((2, 28, 56, 3), np.uint8), np.zeros((0, 0, 0, 3), np.uint8), np.zeros((0, 0, 0, 3), np.uint8)],
        "frame_indices": np.array(["[0, 1]", "[0, 1, 2, 3]", ""], dtype=object), "src_fps": np.array([2.0, 24.0, 0.0]),
        "total_frames": np.array([2, 120, 0]),
        # Ray hands nullable numbers over as NaN
        "fps": np.array([2.0, 24.0, np.nan]), "src_width": np.array([56.0, 640.0, np.nan]),
        "src_height": np.array([28.0, 360.0, np.nan]), "src_frames": np.array([2.0, 120.0, np.nan]),
        "motion": np.array([5.0, 0.0, np.nan]), "flicker": np.array([0.1, 0.0, np.nan]),
        "blank_fraction": np.array([0.0, 1.0, np.nan]), "sharpness": np.array([9.0, 0.0, np.nan]),
        "phash": np.array(["ab", "0000000000000000", None], dtype=object),
    }
    counted = []
    stage.report = counted.append
    rows = stage(batch)
    assert rows.schema == OUTPUT_SCHEMA
    r0, r1, r2 = rows.to_pylist()
    assert eng.seen == ["r0"]
    assert r1["status"] == "skipped" and r1["error"] == error[1] and r1["error_stage"] == "prefilter"
    assert r1["score_s"] is None and r1["raw_output"] is None and r1["motion"] == 0.0 and r1["src_width"] == 640
    assert r1["phash"] == "0000000000000000" and r0["phash"] == "ab" and r0["status"] == "ok"
    assert r2["fps"] is None and r2["src_width"] is None and r2["motion"] is None and r2["phash"] is None
    (c,) = counted
    assert c["rows_prefiltered"] == 1 and c["skipped:motion >= 0.5"] == 1 and c["skipped:blank_fraction < 0.5"] == 1
    assert c["errors_decode"] == 1 and c["rows_ok"] == 1 and c["engine_rows"] == 1 and "errors_prefilter" not in c
