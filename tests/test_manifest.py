"""Manifest input (issue 11, item 2) on real components: Parquet/CSV/JSONL tables served from the moto S3
server and from `http.server` on loopback, real clips, 404s, an unreachable host, non-UTF-8 CSV, duplicate
rows, missing columns, Panda-70M span lists. The read stage is driven directly here (block planning in the
driver, then each block as a read task would); tests/test_manifest_run.py runs manifests through Ray."""

from __future__ import annotations

import csv
import functools
import http.server
import io
import json
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import InputConfig, ScoreConfig, StorageOptions
from pipeline.errors import UsageError
from pipeline.schema import make_row_id
from pipeline.stages.manifest import iter_manifest_block, manifest_blocks, plan_blocks
from pipeline.stages.read import read_shards_batch
from pipeline.storage import filesystem

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videos"


def _real_clips() -> list[dict]:
    manifest = SHARED / "manifest.jsonl"
    assert manifest.exists(), f"real clips missing: {manifest}"
    return [json.loads(l) for l in manifest.read_text().splitlines() if l.strip()]


@pytest.fixture(scope="module")
def clips() -> list[dict]:
    recs = _real_clips()
    assert len(recs) == 16
    return recs


def _csv_bytes(rows: list[dict], fields: list[str]) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue().encode()


def _write_tables(root: Path, rows: list[dict]) -> dict[str, Path]:
    fields = list(rows[0])
    paths = {"csv": root / "m.csv", "jsonl": root / "m.jsonl", "parquet": root / "m.parquet"}
    paths["csv"].write_bytes(_csv_bytes(rows, fields))
    paths["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), paths["parquet"], row_group_size=7)
    return paths


def _read_all(cfg: InputConfig) -> tuple[list[str], list[dict]]:
    fs, _ = filesystem(cfg.manifest, cfg.storage)
    blocks = plan_blocks([cfg.manifest], cfg)
    return blocks, [r for b in blocks for r in iter_manifest_block(b, "g00000", cfg)]


@pytest.fixture(scope="module")
def local_corpus(tmp_path_factory, clips):
    """The 16 real clips copied into a folder, referenced by relative path, captions with commas, quotes and
    newlines (CSV quoting), one extra column, repeated to 48 rows (3 prompts per clip)."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "videos").mkdir()
    rows = []
    for take in range(3):
        for i, c in enumerate(clips):
            name = f"videos/{Path(c['file']).name}"
            (root / name).write_bytes((SHARED / c["file"]).read_bytes())
            rows.append({"video_path": name, "caption": f'{c["prompt"]} "take {take}",\nsecond line',
                         "source": c["source_repo"], "clip_start": take * 0.5, "clip_end": take * 0.5 + 2.0})
    return root, rows, _write_tables(root, rows)


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_formats_stream_in_blocks_and_conserve_rows(local_corpus, fmt):
    root, rows, paths = local_corpus
    cfg = InputConfig(manifest=str(paths[fmt]), columns={"video": "video_path", "prompt": "caption", "start_s": "clip_start",
                                                          "end_s": "clip_end"},
                      manifest_block_bytes=1024, manifest_block_rows=5)
    blocks, out = _read_all(cfg)
    assert len(blocks) >= 5  # several blocks: the manifest is never one unit
    assert len(out) == len(rows)
    assert [r["status"] for r in out] == ["ok"] * len(rows), [r["error"] for r in out if r["error"]]
    assert [r["prompt"] for r in out] == [r["caption"].strip() for r in rows]
    assert [(r["start_s"], r["end_s"]) for r in out] == [(r["clip_start"], r["clip_end"]) for r in rows]
    for r, src in zip(out, rows):
        assert r["source_url"] == f"{root}/{src['video_path']}"
        assert r["video"] == (root / src["video_path"]).read_bytes()
        assert r["row_id"] == make_row_id(r["source_url"], f"{src['clip_start']!r}-{src['clip_end']!r}")
        meta = json.loads(r["meta_json"])
        assert meta == {"source": src["source"]}  # the unmapped columns, to join back
        assert r["shard"] in blocks
    assert len({r["row_id"] for r in out}) == len(rows)
    if fmt == "parquet":  # blocks never cross row groups (7 rows each) and hold at most 5 rows
        assert blocks[:3] == [f"{paths[fmt]}#rows=0:0-5", f"{paths[fmt]}#rows=0:5-7", f"{paths[fmt]}#rows=1:0-5"]


def test_csv_blocks_cut_at_record_boundaries_only(tmp_path):
    """A newline inside a quoted field is never a block boundary, whatever the block size."""
    rows = [{"video": f"v{i}.mp4", "prompt": f'line one "{i}"\nline two,\n"' * (i % 5 + 1)} for i in range(300)]
    p = tmp_path / "m.csv"
    p.write_bytes(_csv_bytes(rows, ["video", "prompt"]))
    for block in (1024, 1500, 4096):
        cfg = InputConfig(manifest=str(p), manifest_block_bytes=block)
        descs = list(manifest_blocks(str(p), cfg))
        assert len(descs) > 3
        from pipeline.stages.manifest import _records

        got = [rec for d in descs for _, rec in _records(d, cfg)]
        assert got == rows


def test_missing_column_fails_at_start_listing_columns(local_corpus, tmp_path):
    _, _, paths = local_corpus
    cfg = ScoreConfig.model_validate({"input": {"manifest": str(paths["parquet"]), "columns": {"video": "url"}},
                                      "output": {"path": str(tmp_path / "out")}})
    from pipeline.run.job import run

    with pytest.raises(UsageError) as e:
        run(cfg)
    msg = str(e.value)
    assert "\n" not in msg and "video='url'" in msg
    assert "its columns: video_path, caption, source, clip_start, clip_end" in msg
    assert not (tmp_path / "out").exists()  # nothing started
    cfg2 = InputConfig(manifest=str(paths["csv"]), columns={"video": "video_path"}, prompt_fields=["text"])
    with pytest.raises(UsageError, match=r"prompt \(none of input.prompt_fields \['text'\]\); its columns: video_path"):
        plan_blocks([str(paths["csv"])], cfg2)


def test_non_utf8_csv_duplicates_and_bad_rows_are_error_rows(tmp_path, clips):
    (tmp_path / "a.mp4").write_bytes((SHARED / clips[0]["file"]).read_bytes())
    (tmp_path / "b.mp4").write_bytes((SHARED / clips[1]["file"]).read_bytes())
    data = (b"video,caption,start_s,end_s\n"
            b"a.mp4,caf\xe9 latin-1 caption,,\n"          # not UTF-8: this row only
            b"a.mp4,fine caption,,\n"
            b"a.mp4,the same clip again,,\n"               # duplicate of the row above (same URL, no span)
            b"a.mp4,a span of it,1.0,3.0\n"                # same URL, another span: its own row
            b"b.mp4,a bad span,0:00:xx,2\n"
            b",no video,,\n"
            b"missing.mp4,not there,,\n")
    (tmp_path / "m.csv").write_bytes(data)
    cfg = InputConfig(manifest=str(tmp_path / "m.csv"), columns={"prompt": "caption", "start_s": "start_s", "end_s": "end_s"})
    _, out = _read_all(cfg)
    got = [(r["status"], r["error"]) for r in out]
    assert len(out) == 7
    assert got[0] == ("error", "manifest row 0: column caption is not UTF-8")
    assert got[1] == ("ok", None) and got[3] == ("ok", None)
    assert got[2][0] == "error" and got[2][1].startswith("duplicate row: the same video and span")
    assert out[2]["key"].endswith("#dup1") and out[2]["video"] == b""
    assert got[4][0] == "error" and "bad span: start_s '0:00:xx' is neither seconds nor H:MM:SS.mmm" in got[4][1]
    assert got[5] == ("error", "manifest row 5: no video URL in column 'video'")
    assert got[6][0] == "error" and got[6][1].startswith("video not found: ")
    assert len({r["row_id"] for r in out}) == 7
    assert {r["error_stage"] for r in out if r["status"] == "error"} == {"read"}


def test_byte_limit_checked_before_reading(tmp_path, clips):
    (tmp_path / "a.mp4").write_bytes((SHARED / clips[0]["file"]).read_bytes())
    (tmp_path / "m.jsonl").write_text(json.dumps({"video": "a.mp4", "prompt": "p"}) + "\n")
    cfg = InputConfig(manifest=str(tmp_path / "m.jsonl"), max_sample_bytes=1000)
    _, out = _read_all(cfg)
    assert out[0]["status"] == "error" and out[0]["error"].endswith("> max_sample_bytes 1000 (not read)")


def test_panda70m_span_lists(tmp_path, clips):
    """One row per source video with a list of timestamp pairs and a parallel list of captions."""
    (tmp_path / "src.mp4").write_bytes((SHARED / clips[2]["file"]).read_bytes())
    rows = [{"videoID": "abc", "url": "src.mp4",
             "timestamp": "[['0:00:00.000', '0:00:02.002'], ['0:00:02.002', '0:00:04.500'], ['0:00:04.000', '0:00:05.000']]",
             "caption": "['a first clip', 'a second clip', \"a third, with 'quotes'\"]", "matching_score": "[0.5, 0.4, 0.3]"},
            {"videoID": "bad", "url": "src.mp4", "timestamp": "[['0:00:00.000', '0:00:02.002']]", "caption": "['one', 'two']",
             "matching_score": "[]"}]
    (tmp_path / "panda.csv").write_bytes(_csv_bytes(rows, list(rows[0])))
    cfg = InputConfig(manifest=str(tmp_path / "panda.csv"), columns={"video": "url", "prompt": "caption", "key": "videoID",
                                                                      "spans": "timestamp"})
    _, out = _read_all(cfg)
    assert [(r["key"], r["status"], r["prompt"], r["start_s"], r["end_s"]) for r in out[:3]] == [
        ("abc@0.0-2.002", "ok", "a first clip", 0.0, 2.002), ("abc@2.002-4.5", "ok", "a second clip", 2.002, 4.5),
        ("abc@4.0-5.0", "ok", "a third, with 'quotes'", 4.0, 5.0)]
    assert out[0]["video"] is out[1]["video"] is out[2]["video"]  # fetched once for the row's spans
    assert out[3]["status"] == "error" and "1 spans but 2 captions" in out[3]["error"]
    assert json.loads(out[0]["meta_json"]) == {"matching_score": "[0.5, 0.4, 0.3]"}


# -- served manifests: moto S3 and http.server ------------------------------------------------------------

def test_s3_manifest_with_relative_and_absolute_urls(s3, clips):
    st = StorageOptions(endpoint_url=s3.endpoint_url)
    fs, _ = filesystem("s3://vscore-test/", st)
    for i in range(3):
        fs.pipe_file(f"vscore-test/man/videos/v{i}.mp4", (SHARED / clips[i]["file"]).read_bytes())
    rows = [{"video": f"videos/v{i}.mp4", "prompt": f"clip {i}"} for i in range(3)]
    rows += [{"video": "s3://vscore-test/man/videos/v0.mp4", "prompt": "absolute URL, another span"},
             {"video": "s3://vscore-test/man/videos/nope.mp4", "prompt": "404"}]
    rows[3]["end_s"] = 2.0
    for r in rows:
        r.setdefault("end_s", None)
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    fs.pipe_file("vscore-test/man/m.parquet", buf.getvalue())
    cfg = InputConfig(manifest="s3://vscore-test/man/m.parquet", storage=st, columns={"end_s": "end_s"})
    _, out = _read_all(cfg)
    assert [r["status"] for r in out] == ["ok"] * 4 + ["error"]
    assert out[0]["source_url"] == "s3://vscore-test/man/videos/v0.mp4" and out[0]["video"] == (SHARED / clips[0]["file"]).read_bytes()
    assert out[3]["video"] == out[0]["video"] and out[3]["end_s"] == 2.0 and out[3]["row_id"] != out[0]["row_id"]
    assert out[4]["error"] == "video not found: s3://vscore-test/man/videos/nope.mp4"
    # the Ray Data UDF around it: blocks of samples_per_block rows, the resume manifest of the block written
    batch = {"shard": [b for b in plan_blocks([cfg.manifest], cfg)], "shard_group": ["g00000"]}
    blocks = list(read_shards_batch(batch, cfg.model_copy(update={"samples_per_block": 2}), manifest_dir="s3://vscore-test/man/_m",
                                    manifest_storage=st))
    assert [len(b["row_id"]) for b in blocks] == [2, 2, 1]
    assert fs.ls("vscore-test/man/_m")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):  # noqa: D401 - keep test output clean
        pass


@pytest.fixture()
def http_root(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_manifest_with_404_and_unreachable(http_root, clips):
    root, base = http_root
    (root / "v").mkdir()
    for i in range(2):
        (root / "v" / f"c{i}.mp4").write_bytes((SHARED / clips[i]["file"]).read_bytes())
    lines = [{"video": "v/c0.mp4", "caption": "relative to the manifest's folder"},
             {"video": f"{base}/v/c1.mp4", "caption": "absolute http URL"},
             {"video": "v/gone.mp4", "caption": "404"},
             {"video": "http://127.0.0.1:9/x.mp4", "caption": "connection refused (discard port)"}]
    (root / "m.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
    cfg = InputConfig(manifest=f"{base}/m.jsonl", storage={"retries": 2}, manifest_block_bytes=1024)
    _, out = _read_all(cfg)
    assert [r["status"] for r in out] == ["ok", "ok", "error", "error"], [r["error"] for r in out]
    assert out[0]["source_url"] == f"{base}/v/c0.mp4" and out[0]["video"] == (root / "v" / "c0.mp4").read_bytes()
    assert out[1]["video"] == (root / "v" / "c1.mp4").read_bytes()
    assert out[2]["error"] == f"video not found: {base}/v/gone.mp4"
    assert out[3]["error"].startswith("cannot fetch http://127.0.0.1:9/x.mp4 after 2 attempt(s): ")
    # CSV over the same server (no range requests there): several blocks, read by streaming
    rows = [{"video": "v/c0.mp4", "caption": f"take {i}, \"quoted\"\nnewline"} for i in range(60)]
    (root / "m.csv").write_bytes(_csv_bytes(rows, ["video", "caption"]))
    cfg = InputConfig(manifest=f"{base}/m.csv", manifest_block_bytes=1024)
    blocks, out = _read_all(cfg)
    assert len(blocks) > 2 and [r["prompt"] for r in out[:60:59]] == [rows[0]["caption"], rows[59]["caption"]]
    # the manifest itself missing, or its host unreachable: one line at start
    with pytest.raises(UsageError, match="does not exist"):
        plan_blocks([f"{base}/nope.csv"], InputConfig(manifest=f"{base}/nope.csv"))
    with pytest.raises(UsageError, match="cannot read http://127.0.0.1:9/m.csv"):
        plan_blocks(["http://127.0.0.1:9/m.csv"], InputConfig(manifest="http://127.0.0.1:9/m.csv"))


def test_driver_streams_a_large_manifest(tmp_path):
    """The driver cuts a 900k-row CSV (~42 MB, quoted newlines in every 7th row) into blocks in one streaming
    pass: its peak Python memory stays a fraction of the file, it holds one short descriptor per block, and the
    blocks together hold every row exactly once (counted per block, as read tasks would)."""
    import tracemalloc

    row = b'clips/v%07d.mp4,"a caption, with a comma",x\n'
    quoted = b'clips/v%07d.mp4,"two\nlines ""quoted""",x\n'
    path = tmp_path / "big.csv"
    n = 900_000
    with open(path, "wb") as f:
        f.write(b"video,caption,extra\n")
        for start in range(0, n, 10_000):
            f.write(b"".join((quoted if i % 7 == 0 else row) % i for i in range(start, start + 10_000)))
    size = path.stat().st_size
    assert size > 40e6
    cfg = InputConfig(manifest=str(path), manifest_block_bytes=4 << 20)
    tracemalloc.start()
    blocks = plan_blocks([str(path)], cfg)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < size / 2, (peak, size)
    assert 9 <= len(blocks) <= 11 and sum(len(b) for b in blocks) < 2000
    from pipeline.stages.manifest import _records

    counts = [sum(1 for _ in _records(b, cfg)) for b in blocks]
    assert sum(counts) == n
    first = next(rec for _, rec in _records(blocks[1], cfg))
    assert isinstance(first, dict) and first["video"].startswith("clips/v") and first["extra"] == "x"


def test_relative_manifest_path_and_bracket_caption(tmp_path, clips, monkeypatch):
    """A manifest named by a relative path resolves (and its relative video paths) against the driver's working
    directory, so read tasks elsewhere find them; a caption starting with '[' is text when the row has one span."""
    (tmp_path / "v.mp4").write_bytes((SHARED / clips[0]["file"]).read_bytes())
    (tmp_path / "m.jsonl").write_text(json.dumps({"video": "v.mp4", "prompt": "[Music] a cat", "spans": [[0, 2]]}) + "\n")
    monkeypatch.chdir(tmp_path)
    cfg = InputConfig(manifest="m.jsonl", columns={"spans": "spans"})
    blocks = plan_blocks(["m.jsonl"], cfg)
    assert blocks == [f"{tmp_path}/m.jsonl#bytes=0-{(tmp_path / 'm.jsonl').stat().st_size}"]
    monkeypatch.chdir("/")
    out = list(iter_manifest_block(blocks[0], "g", cfg))
    assert [(r["status"], r["source_url"], r["prompt"], r["end_s"]) for r in out] == [("ok", f"{tmp_path}/v.mp4", "[Music] a cat", 2.0)]


def test_glob_of_manifests_on_s3(s3, clips):
    """`input.manifest` as a glob: every matching file, each checked and cut into its own blocks, in name order."""
    from pipeline.stages.read import list_shards

    st = StorageOptions(endpoint_url=s3.endpoint_url)
    fs, _ = filesystem("s3://vscore-test/", st)
    fs.pipe_file("vscore-test/glob/v.mp4", (SHARED / clips[3]["file"]).read_bytes())
    for part in range(3):
        fs.pipe_file(f"vscore-test/glob/part-{part}.jsonl",
                     "".join(json.dumps({"video": "v.mp4", "text": f"p{part}-{i}", "start_s": i}) + "\n" for i in range(4)).encode())
    fs.pipe_file("vscore-test/glob/other.csv", b"not,a,match\n")
    cfg = InputConfig(manifest="s3://vscore-test/glob/part-*.jsonl", storage=st, columns={"start_s": "start_s"})
    files = list_shards(cfg.manifest, st)
    assert files == [f"s3://vscore-test/glob/part-{p}.jsonl" for p in range(3)]
    blocks = plan_blocks(files, cfg)
    out = [r for b in blocks for r in iter_manifest_block(b, "g", cfg)]
    assert [r["prompt"] for r in out] == [f"p{p}-{i}" for p in range(3) for i in range(4)]
    assert all(r["status"] == "ok" for r in out)
    # the same video and start in two files: different blocks, so both are scored (documented limitation)
    assert len({r["row_id"] for r in out}) == 4
