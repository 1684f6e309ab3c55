"""Never score the same clip twice: content_hash on every row; within a run a repeated (clip, prompt) is
scored once and copied (duplicate_of); across runs `cache.url` answers clips it has with zero engine calls,
and a different scoring setting misses."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.dataset as pads

from pipeline.config import ScoreConfig, StorageOptions
from pipeline.run.job import run
from pipeline.schema import make_content_hash
from pipeline.storage import filesystem
from pipeline.tools.pack import pack
from tests.fault_proxy import FaultProxy
from tests.outputs import read_output

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


def test_stored_keys_filter_has_no_false_negatives_and_few_false_positives():
    import hashlib

    from pipeline.stages.stored_keys import StoredKeys

    keys = [hashlib.blake2b(str(i).encode(), digest_size=16).hexdigest() for i in range(60_000)]
    s = StoredKeys(first_capacity=1_000)  # grows through six filters on the way to 40,000 keys
    for i in range(0, 40_000, 7):  # batches of odd sizes cross the filters' capacities
        s.add(keys[i:min(i + 7, 40_000)])
    assert len(s.filters) >= 6 and s.added == 40_000
    assert all(s.may_contain(keys[:40_000]))
    fp = sum(s.may_contain(keys[40_000:])) / 20_000
    assert fp < 0.02, fp
    assert s.nbytes() < 40_000 * 4  # a few bytes per stored key
    assert s.may_contain([]) == []


def _store_requests(requests: list[tuple[str, str]], method: str) -> list[str]:
    return [p for m, p in requests if m == method and "/_vscore/score-store/" in p]


def test_fresh_run_makes_no_store_lookups_and_a_rerun_restores_from_the_store(ray_local, s3, tmp_path):  # noqa: F811
    """On S3 a fresh run GETs no score-store object that is not there (the registry's filter knows what was
    stored) and PUTs one per scored clip; in-run duplicates are still copied (their GETs are hits). A rerun over the same run whose rows were scored
    but not committed (the output's files and markers gone, the store kept) GETs them and restores every row
    with zero engine calls."""
    local, _datas = _shards(tmp_path)
    direct_opts = StorageOptions(endpoint_url=s3.endpoint_url)
    direct, _ = filesystem("s3://vscore-test/fresh", direct_opts)
    direct.put(sorted(str(p) for p in Path(local).parent.glob("*.tar")), "vscore-test/fresh/shards/")
    record = tmp_path / "calls"
    with FaultProxy(s3.port, fail_fraction=0.0) as proxy:
        store = {"endpoint_url": proxy.endpoint_url}
        cfg = _cfg("s3://vscore-test/fresh/shards/*.tar", tmp_path / "unused", record)
        cfg = ScoreConfig.model_validate({**cfg.model_dump(), "input": {**cfg.input.model_dump(), "storage": store},
                                          "output": {**cfg.output.model_dump(), "path": "s3://vscore-test/fresh/out", "storage": store}})
        s1 = run(cfg, progress_every_s=60)
        first = list(proxy.requests)
        assert len(_calls(record)) == 4 and s1["duplicates"] == 3 and s1["rows_out"] == 7
        puts, gets = _store_requests(first, "PUT"), _store_requests(first, "GET")
        assert len(puts) == len(set(puts)) == 4  # one object per scored clip
        # no GET that could miss: only the stored clips' objects, looked up by their duplicates
        assert set(gets) <= set(puts) and len(gets) <= s1["duplicates"], (gets, puts)
        rows = {r["key"]: r for r in read_output("s3://vscore-test/fresh/out", direct_opts).to_pylist()}
        assert len(rows) == 7 and all(r["status"] == "ok" for r in rows.values())
        assert sum(1 for r in rows.values() if r["duplicate_of"]) == 3
        # scored but not committed: drop every output file and marker, keep the store
        kept = "vscore-test/fresh/out/_vscore/score-store/"
        gone = [p for p in direct.find("vscore-test/fresh/out") if not p.startswith(kept)]
        assert gone and direct.find(kept)
        direct.rm(gone)
        direct.invalidate_cache()
        proxy.requests.clear()
        s2 = run(cfg, progress_every_s=60)
        assert _calls(record) == []  # every clip restored from the store
        assert len(_store_requests(proxy.requests, "GET")) >= 4
    rows2 = {r["key"]: r for r in read_output("s3://vscore-test/fresh/out", direct_opts).to_pylist()}
    assert s2["rows_out"] == 7 and len(rows2) == 7
    for k, r in rows.items():
        assert rows2[k]["status"] == "ok" and rows2[k]["row_id"] == r["row_id"]
        assert rows2[k]["raw_output"] == r["raw_output"] and rows2[k]["visual_quality"] == r["visual_quality"]
        assert rows2[k]["prompt_tokens"] == r["prompt_tokens"]  # its own earlier scoring, restored as it was


