"""`vscore filter`: S3 in, S3 out on the moto server. Source shards and a scores dataset (hive-partitioned
Parquet, the real output schema) on S3; the filter writes a manifest and new shards back to S3; both are
read back and compared with what the expression should keep. Plus the guard rails of --where."""

from __future__ import annotations

import io
import json
import tarfile

import pyarrow.parquet as pq
import pytest

from pipeline.config import StorageOptions
from pipeline.tools.filter import ExpressionError, compile_where, filter_scores
from pipeline.schema import COLUMNS, make_row_id, rows_to_table
from pipeline.storage import filesystem
from pipeline.stages.read import tar_bytes

BUCKET = "vscore-test"
RUN = "vs2-filtertest01"
WHERE = "visual_quality >= 4 and physical_consistency >= 3"


def _fs(storage: StorageOptions):
    fs, _ = filesystem(f"s3://{BUCKET}/", storage)
    return fs


@pytest.fixture(scope="module")
def corpus(s3):  # noqa: F811
    """3 source shards x 4 samples (mp4 + json + txt; one sample without json), and their scores."""
    st = StorageOptions(endpoint_url=s3.endpoint_url)
    fs = _fs(st)
    rows, samples = [], {}
    n = 0
    for si in range(3):
        url = f"s3://{BUCKET}/filter/src/shard-{si:06d}.tar"
        members = []
        for j in range(4):
            key = f"clip{si}{j}"
            video = bytes([si, j]) * (500 + 37 * n)  # distinct bytes per sample
            meta = {"prompt": f"prompt {key}", "source": "gen-A" if n % 2 else "gen-B"}
            parts = {"mp4": video, "txt": f"caption {key}".encode()}
            if key != "clip21":
                parts["json"] = json.dumps(meta).encode()
            members += [(f"{key}.{ext}", data) for ext, data in parts.items()]
            samples[(url, key)] = parts
            vq, tq, pc = 1 + n % 5, 1 + (n * 2) % 5, 1 + (n * 3) % 5
            row = {"row_id": make_row_id(url, key), "run_id": RUN, "shard_group": "g00000", "key": key, "shard": url,
                   "prompt": meta["prompt"], "status": "ok", "parse_mode": "strict", "model": "TIGER-Lab/VideoScore2",
                   "template": "vs2-eval"}
            if n == 6:  # an unparsed row: no scores
                row["parse_mode"] = "failed"
            else:
                row.update(visual_quality=vq, text_alignment=tq, physical_consistency=pc,
                           visual_quality_soft=vq * 0.9, text_alignment_soft=tq * 0.8, physical_consistency_soft=pc * 0.7,
                           visual_quality_expected=vq - 0.1, text_alignment_expected=tq + 0.1, physical_consistency_expected=pc * 1.0)
            rows.append(row)
            n += 1
        with fs.open(url, "wb") as f:
            f.write(tar_bytes(members))
    # an error row from a shard that could not be read: no sample, no scores
    bad = "s3://vscore-test/filter/src/shard-000009.tar"
    rows.append({"row_id": make_row_id(bad, "__shard__"), "run_id": RUN, "shard_group": "g00000", "key": "__shard__",
                 "shard": bad, "status": "error", "error_stage": "read", "error": "NoSuchKey"})
    table = rows_to_table(rows)
    # the layout `vscore score` writes: root/run_id=.../shard_group=.../*.parquet
    part = f"{BUCKET}/filter/scores/run_id={RUN}/shard_group=g00000"
    with fs.open(f"{part}/part-0.parquet", "wb") as f:
        pq.write_table(table.drop_columns(["run_id", "shard_group"]), f)
    _record_run(st, f"s3://{BUCKET}/filter/scores", f"s3://{BUCKET}/filter/src/shard-*.tar")
    return st, rows, samples


def _record_run(st: StorageOptions, out: str, shards: str, run_id: str = RUN) -> None:
    """The run record `vscore score` writes at start (where the run read its inputs), by the same code."""
    from pipeline.config import ScoreConfig
    from pipeline.run.resume import guard_fingerprint

    guard_fingerprint(ScoreConfig.model_validate({"input": {"shards": shards, "storage": st.model_dump()},
                                                  "output": {"path": out, "run_id": run_id, "storage": st.model_dump()}}))


def _expected(rows):
    return [r for r in rows if r.get("visual_quality") is not None and r["visual_quality"] >= 4
            and r["physical_consistency"] >= 3]


def _read_tar(fs, url) -> list[tuple[str, bytes]]:
    with fs.open(url, "rb") as f:
        data = f.read()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]


def test_filter_s3_to_s3(corpus, capsys):
    st, rows, samples = corpus
    from pipeline.cli import main

    fs = _fs(st)
    code = main(["filter", f"s3://{BUCKET}/filter/scores", f"s3://{BUCKET}/filter/out/kept.parquet", "--where", WHERE,
                 "--shards-out", f"s3://{BUCKET}/filter/out/shards", "--shard-size", "2",
                 "--endpoint-url", st.endpoint_url])
    out = capsys.readouterr()
    assert code == 0, out.err
    summary = json.loads(out.out)
    want = _expected(rows)
    assert 2 <= len(want) < len(rows) - 3  # the expression keeps some and drops some
    assert summary["rows"] == len(rows) and summary["kept"] == len(want) and summary["dropped"] == len(rows) - len(want)
    # per condition, each on its own
    conds = {c["condition"]: c["pass"] for c in summary["conditions"]}
    assert conds == {"(visual_quality >= 4)": sum(1 for r in rows if (r.get("visual_quality") or 0) >= 4),
                     "(physical_consistency >= 3)": sum(1 for r in rows if (r.get("physical_consistency") or 0) >= 3)}
    # per dimension
    scored = [r for r in rows if r.get("visual_quality") is not None]
    for d in ("visual_quality", "text_alignment", "physical_consistency"):
        v = summary["dimensions"][d]
        assert v["scored"] == len(scored) and v["kept"] == len(want) and v["dropped"] == len(scored) - len(want)
        assert v["unscored_dropped"] == len(rows) - len(scored)
        assert v["mean_kept"] == pytest.approx(sum(r[d] for r in want) / len(want))
    assert "kept" in out.err and "per dimension" in out.err

    # (a) the manifest, read back from S3
    with fs.open(f"{BUCKET}/filter/out/kept.parquet", "rb") as f:
        man = pq.read_table(f).to_pylist()
    assert [(m["shard"], m["key"]) for m in man] == sorted((r["shard"], r["key"]) for r in want)
    by_id = {r["row_id"]: r for r in want}
    for m in man:
        r = by_id[m["row_id"]]
        assert m["run_id"] == RUN and m["visual_quality"] == r["visual_quality"]
        assert m["physical_consistency_soft"] == pytest.approx(r["physical_consistency_soft"])
        assert m["out_shard"].startswith(f"s3://{BUCKET}/filter/out/shards/shard-")

    # (b) the shards: only the kept samples, in source order, 2 per shard, members byte-for-byte but the json
    written = summary["shards_written"]
    assert [w["samples"] for w in written] == [2] * (len(want) // 2) + ([len(want) % 2] if len(want) % 2 else [])
    got = []
    for w in written:
        members = _read_tar(fs, w["url"])
        keys = list(dict.fromkeys(name.split(".", 1)[0] for name, _ in members))
        for key in keys:
            parts = {name.split(".", 1)[1]: data for name, data in members if name.split(".", 1)[0] == key}
            m = next(x for x in man if x["key"] == key)
            src = samples[(m["shard"], key)]
            assert parts["mp4"] == src["mp4"] and parts["txt"] == src["txt"]
            meta = json.loads(parts["json"])
            if "json" in src:
                assert {k: meta[k] for k in json.loads(src["json"])} == json.loads(src["json"])
            assert meta["vscore"]["row_id"] == m["row_id"] and meta["vscore"]["visual_quality"] == m["visual_quality"]
            assert meta["vscore"]["run_id"] == RUN and m["out_shard"] == w["url"]
            got.append(key)
    assert got == [m["key"] for m in man]  # every kept sample exactly once, in source order
    assert summary["samples_written"] == len(want) and summary["kept_not_in_shards"] == 0

    # the new shards are readable by the pipeline's own reader (what `vscore score` would read next)
    from pipeline.config import InputConfig
    from pipeline.stages.read import iter_shard

    cfg = InputConfig(shards=written[0]["url"], storage=st)
    back = list(iter_shard(written[0]["url"], "g00000", cfg))
    assert [b["status"] for b in back] == ["ok"] * written[0]["samples"]


def test_filter_jsonl_manifest_and_keep_errors(corpus, tmp_path):
    """A JSONL manifest; an expression may use any column (here status): the __shard__ error row is kept
    in the manifest and reported as having no sample in its shard."""
    st, rows, _ = corpus
    out = tmp_path / "kept.jsonl"
    s = filter_scores(f"s3://{BUCKET}/filter/scores", str(out), "status = 'error' or key like 'clip0%'", storage=st,
                      shards_out=str(tmp_path / "shards"), shard_size=100)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert {x["key"] for x in lines} == {"__shard__", "clip00", "clip01", "clip02", "clip03"}
    assert s["samples_written"] == 4 and s["kept_not_in_shards"] == 1
    assert s["kept_not_in_shards_examples"] == ["s3://vscore-test/filter/src/shard-000009.tar#__shard__"]


COLS = list(COLUMNS)


@pytest.mark.parametrize("expr, message", [
    ("visual_quality >= 4; DROP TABLE scores", "several statements|not a valid expression"),
    ("visual_quality >= 4); SELECT 1; --", "several statements"),
    ("visual_quality > 1) UNION SELECT * FROM read_csv('/etc/passwd') --", "single expression"),
    ("visual_quality > 1) ORDER BY (1", "single expression"),
    ("visual_quality > (SELECT max(visual_quality) FROM scores)", "subquery"),
    ("read_csv('/etc/passwd') IS NOT NULL", "not allowed"),
    ("getenv('HOME') = 'x'", "not allowed"),
    ("sum(visual_quality) > 1", "not allowed"),
    ("row_number() OVER () < 3", "window"),
    ("nonexistent >= 4", "unknown column"),
    ("scores.visual_quality >= 4", "plain column names"),
    ("__import__('os').system('true')", "not allowed"),
    ("", "empty"),
    ("1 = 1", "does not use any column"),
    ("visual_quality >=", "not a valid expression"),
])
def test_where_rejects_everything_but_an_expression(expr, message):
    with pytest.raises(ExpressionError, match=message):
        compile_where(expr, COLS)


def test_where_accepts_expressions_and_renders_them():
    sql, parts, used = compile_where("visual_quality >= 4 AND coalesce(physical_consistency_soft, 0) > 2.5 "
                                     "and (prompt LIKE '%cat%' or status IN ('ok')) and text_alignment between 2 and 5", COLS)
    assert used == ["physical_consistency_soft", "prompt", "status", "text_alignment", "visual_quality"]
    assert len(parts) == 4 and parts[0] == "(visual_quality >= 4)"
    assert sql.startswith("((") and "COALESCE" in sql.upper()
    # a ';' inside a string literal is data, not a statement separator
    sql, _, _ = compile_where("prompt = 'a; DROP TABLE scores'", COLS)
    assert "DROP TABLE" in sql and sql.count("'") == 2


def test_several_runs_need_run_id(tmp_path):
    import os

    for run in ("r1", "r2"):
        rows = [{"row_id": make_row_id("s", f"k{i}"), "run_id": run, "shard_group": "g0", "key": f"k{i}", "shard": "s",
                 "status": "ok", "visual_quality": i + (run == "r2")} for i in range(1, 6)]
        part = tmp_path / "scores" / f"run_id={run}" / "shard_group=g0"
        os.makedirs(part)
        pq.write_table(rows_to_table(rows).drop_columns(["run_id", "shard_group"]), part / "a.parquet")
    with pytest.raises(ExpressionError, match="2 runs"):
        filter_scores(str(tmp_path / "scores"), str(tmp_path / "m.jsonl"), "visual_quality >= 4")
    s = filter_scores(str(tmp_path / "scores"), str(tmp_path / "m.jsonl"), "visual_quality >= 4", run_id="r2")
    assert (s["rows"], s["kept"]) == (5, 3)
    assert {json.loads(x)["run_id"] for x in (tmp_path / "m.jsonl").read_text().splitlines()} == {"r2"}


@pytest.fixture()
def planted(corpus, tmp_path):
    """Scores whose shard column also names a secret tar outside the run's input folder (S3 and local, and
    a '..' path that string-starts with the input folder): kept rows there must never be opened."""
    st, rows, _ = corpus
    fs = _fs(st)
    secret = tar_bytes([("s1.mp4", b"SECRET-BYTES" * 10), ("s1.json", b'{"prompt": "x"}')])
    fs.pipe(f"{BUCKET}/secret/shard-000000.tar", secret)
    local = tmp_path / "local-secret.tar"
    local.write_bytes(secret)
    outside = [f"s3://{BUCKET}/secret/shard-000000.tar", f"s3://{BUCKET}/filter/src/../../secret/shard-000000.tar", str(local)]
    extra = [{"row_id": make_row_id(u, "s1"), "run_id": RUN, "shard_group": "g00000", "key": "s1", "shard": u,
              "status": "ok", "parse_mode": "strict", "visual_quality": 5, "text_alignment": 5, "physical_consistency": 5}
             for u in outside]
    table = rows_to_table(rows + extra)
    root = f"{BUCKET}/planted-{tmp_path.name}/scores"
    with fs.open(f"{root}/run_id={RUN}/shard_group=g00000/part-0.parquet", "wb") as f:
        pq.write_table(table.drop_columns(["run_id", "shard_group"]), f)
    _record_run(st, f"s3://{root}", f"s3://{BUCKET}/filter/src/shard-*.tar")
    return st, f"s3://{root}", outside


def test_filter_reads_sources_only_under_the_runs_input_folder(planted, tmp_path):
    st, scores, outside = planted
    s = filter_scores(scores, str(tmp_path / "kept.parquet"), "visual_quality >= 5", storage=st,
                      shards_out=str(tmp_path / "shards"), shard_size=100)
    assert s["source_shards_refused_count"] == 3 and sorted(s["source_shards_refused"]) == sorted(outside)
    assert s["samples_written"] >= 1  # the kept samples under the input folder were copied
    for tar in (tmp_path / "shards").glob("*.tar"):
        assert b"SECRET-BYTES" not in tar.read_bytes()
    # told otherwise: an explicit folder, or any URL (the '..' URL still resolves only if the caller allows any)
    s2 = filter_scores(scores, str(tmp_path / "k2.parquet"), "visual_quality >= 5", storage=st,
                       shards_out=str(tmp_path / "shards2"), source_prefixes=[f"s3://{BUCKET}/secret/"])
    assert outside[0] not in s2["source_shards_refused"] and outside[1] in s2["source_shards_refused"]
    assert any(b"SECRET-BYTES" in t.read_bytes() for t in (tmp_path / "shards2").glob("*.tar"))
    s3_ = filter_scores(scores, str(tmp_path / "k3.parquet"), "visual_quality >= 5", storage=st,
                        shards_out=str(tmp_path / "shards3"), any_source=True)
    assert s3_["source_shards_refused_count"] == 0


def test_filter_without_a_run_record_asks_where_sources_are(corpus, tmp_path, capsys):
    st, rows, _ = corpus
    fs = _fs(st)
    root = f"{BUCKET}/norecord-{tmp_path.name}/scores"
    with fs.open(f"{root}/run_id={RUN}/shard_group=g00000/part-0.parquet", "wb") as f:
        pq.write_table(rows_to_table(rows).drop_columns(["run_id", "shard_group"]), f)
    from pipeline.cli import main

    code = main(["filter", f"s3://{root}", str(tmp_path / "k.parquet"), "--where", WHERE,
                 "--shards-out", str(tmp_path / "shards"), "--endpoint-url", st.endpoint_url])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--source-prefix" in err[0]
    code = main(["filter", f"s3://{root}", str(tmp_path / "k.parquet"), "--where", WHERE, "--shards-out",
                 str(tmp_path / "shards"), "--endpoint-url", st.endpoint_url, "--source-prefix", f"s3://{BUCKET}/filter/src/"])
    assert code == 0


def test_filter_applies_the_per_sample_limit(corpus, tmp_path):
    """Samples past max_sample_bytes are not copied (and their members past the limit are never read)."""
    st, rows, samples = corpus
    sizes = {k: sum(len(v) for v in parts.values()) for (_, k), parts in samples.items()}
    limit = sorted(sizes.values())[len(sizes) // 2]
    s = filter_scores(f"s3://{BUCKET}/filter/scores", str(tmp_path / "k.parquet"), "status = 'ok'", storage=st,
                      shards_out=str(tmp_path / "shards"), shard_size=100, max_sample_bytes=limit)
    big = {k for k, n in sizes.items() if n > limit}
    assert big and s["kept_over_limits"] == len(big)
    assert s["samples_written"] == len([r for r in rows if r["status"] == "ok"]) - len(big)
