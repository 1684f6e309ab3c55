"""Never score the same clip twice: content_hash on every row; within a run a repeated (clip, prompt) is
scored once and copied (duplicate_of); across runs `cache.url` answers clips it has with zero engine calls,
and a different scoring setting misses."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.dataset as pads

from pipeline.config import ScoreConfig
from pipeline.run.job import run
from pipeline.schema import make_content_hash
from pipeline.tools.pack import pack

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "videos"


def _shards(tmp_path: Path) -> tuple[str, list[bytes]]:
    recs = [json.loads(l) for l in (SAMPLES / "manifest.jsonl").read_text().splitlines() if l.strip()][:3]
    src = tmp_path / "src"
    src.mkdir()
    lines, datas = [], []
    # 3 distinct clips, then the same 3 again under other keys (same bytes, same prompt), then clip 0 with another prompt
    for i in range(7):
        r = recs[i % 3]
        data = (SAMPLES / r["file"]).read_bytes()
        (src / f"v{i}.mp4").write_bytes(data)
        datas.append(data)
        lines.append(json.dumps({"file": f"v{i}.mp4", "prompt": r["prompt"] if i < 6 else "another prompt"}))
    (src / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    pack(src, str(tmp_path / "shards"), shard_size=4)  # duplicates across shards and batches
    return f"{tmp_path}/shards/*.tar", datas


def _cfg(shards: str, out: Path, record: Path, cache: str | None = None, **sampling) -> ScoreConfig:
    return ScoreConfig.model_validate({
        "input": {"shards": shards, "samples_per_block": 2},
        "decode": {"actors": 1, "num_cpus": 0.25, "batch_size": 2, "max_pixels": 50176, "min_pixels": 3136},
        "engine": {"kind": "pipeline.engines.fixed:FixedOutputEngine", "engine_kwargs": {"record_to": str(record)},
                   "actors": 1, "num_gpus": 0, "num_cpus": 0.25, "batch_size": 2, "batches_in_flight": 1},
        "sampling": sampling,
        "output": {"path": str(out), "min_rows_per_file": 2},
        "cache": {"url": cache},
        "ray": {"progress_bars": False},
    })


def _rows(path: Path) -> dict[str, dict]:
    return {r["key"]: r for r in pads.dataset(str(path), format="parquet", partitioning="hive").to_table().to_pylist()}


def _calls(record: Path) -> list[str]:
    names = sorted(p.name for p in record.iterdir()) if record.exists() else []
    for p in record.glob("*"):
        p.unlink()
    return names


def test_duplicates_scored_once_and_cache_across_runs(ray_local, tmp_path):  # noqa: F811
    shards, datas = _shards(tmp_path)
    record, cache = tmp_path / "calls", str(tmp_path / "cache")
    s1 = run(_cfg(shards, tmp_path / "out1", record, cache), progress_every_s=60)
    rows = _rows(tmp_path / "out1")
    assert len(rows) == 7 and all(r["status"] == "ok" and r["visual_quality"] == 3 for r in rows.values())
    for i in range(7):
        assert rows[f"v{i}"]["content_hash"] == make_content_hash(datas[i])
    assert len(_calls(record)) == 4  # 3 clips + clip 0 under another prompt
    dups = {k: r["duplicate_of"] for k, r in rows.items() if r["duplicate_of"]}
    assert len(dups) == 3 and s1["duplicates"] == 3 and s1["from_cache"] == 0
    by_id = {r["row_id"]: r for r in rows.values()}
    for k, owner in dups.items():
        o = by_id[owner]
        assert o["duplicate_of"] is None and o["content_hash"] == rows[k]["content_hash"] and o["prompt"] == rows[k]["prompt"]
        assert o["raw_output"] == rows[k]["raw_output"] and rows[k]["score_s"] is None
    # another output, same scoring settings: every clip from the cache, zero engine calls
    s2 = run(_cfg(shards, tmp_path / "out2", record, cache), progress_every_s=60)
    assert _calls(record) == []
    rows2 = _rows(tmp_path / "out2")
    assert len(rows2) == 7 and s2["from_cache"] >= 4 and s2["from_cache"] + s2["duplicates"] == 7
    assert all(r["visual_quality"] == 3 and r["status"] == "ok" for r in rows2.values())
    # a different score-affecting setting misses
    run(_cfg(shards, tmp_path / "out3", record, cache, max_new_tokens=64), progress_every_s=60)
    assert len(_calls(record)) == 4


def test_content_hash_covers_span_and_report_counts_reuse():
    import pandas as pd

    from pipeline.tools.report_prefilter import prefilter_facts, prefilter_html

    assert make_content_hash(b"abc") == make_content_hash(b"abc") != make_content_hash(b"abd")
    assert make_content_hash(b"abc", 0.0, 2.0) != make_content_hash(b"abc") != make_content_hash(b"abc", 0.0, 3.0)
    df = pd.DataFrame({"status": ["ok"] * 4, "from_cache": [True, False, False, None],
                       "duplicate_of": [None, "r1", None, "r1"], "score_s": [None, None, 0.5, None]})
    f = prefilter_facts(df)
    assert f["from_cache"] == 1 and f["duplicates"] == 2
    assert "1 rows from the cross-run score cache" in prefilter_html(f, lambda *a: "")
