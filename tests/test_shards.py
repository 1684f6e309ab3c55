"""Packing, listing and reading WebDataset shards on local disk and on a real (moto) S3 server."""

import json
import tarfile
from pathlib import Path


from pipeline.config import InputConfig, StorageOptions
from pipeline.schema import make_row_id
from pipeline.stages.read import iter_shard, list_shards, tar_bytes
from pipeline.tools.pack import pack

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "videos"


def _manifest():
    return [json.loads(l) for l in (SAMPLES / "manifest.jsonl").read_text().splitlines() if l.strip()]


def test_pack_local_layout(tmp_path):
    shards = pack(SAMPLES, str(tmp_path / "out"), shard_size=3)
    n = len(_manifest())
    assert [s["samples"] for s in shards] == [3] * (n // 3) + ([n % 3] if n % 3 else [])
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == [f"shard-{i:06d}.tar" for i in range(len(shards))]
    with tarfile.open(tmp_path / "out" / "shard-000000.tar") as tar:
        members = tar.getnames()
    keys = {m.split(".", 1)[0] for m in members}
    assert len(keys) == 3 and all(m.endswith((".mp4", ".json")) for m in members)
    first = _manifest()[0]
    assert sorted(members[:2]) == [first["file"].rsplit(".", 1)[0].replace("/", "_") + ext for ext in (".json", ".mp4")]
    meta = json.loads(tarfile.open(tmp_path / "out" / "shard-000000.tar").extractfile(sorted(members[:2])[0]).read())
    assert meta["prompt"] == first["prompt"] and meta["license"] == first["license"]
    # stable: packing again gives the same members, in the same order, with the same bytes
    again = pack(SAMPLES, str(tmp_path / "again"), shard_size=3)
    assert [s["samples"] for s in again] == [s["samples"] for s in shards]

    def contents(path):
        with tarfile.open(path) as t:
            return [(m.name, t.extractfile(m).read()) for m in t.getmembers() if m.isfile()]

    for i in range(len(shards)):
        name = f"shard-{i:06d}.tar"
        assert contents(tmp_path / "again" / name) == contents(tmp_path / "out" / name)


def test_pack_sidecars_and_unique_keys(tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    vid = (SAMPLES / _manifest()[0]["file"]).read_bytes()
    (src / "a" / "clip.mp4").write_bytes(vid)
    (src / "a" / "clip.txt").write_text("a prompt from txt\n")
    (src / "b" / "clip.mp4").write_bytes(vid)
    (src / "b" / "clip.json").write_text(json.dumps({"prompt": "from json", "model": "m1"}))
    (src / "a_clip.mp4").write_bytes(vid)  # sanitises to the same key as a/clip.mp4
    (src / "a_clip.txt").write_text("third")
    shards = pack(src, str(tmp_path / "out"), shard_size=10)
    rows = list(iter_shard(shards[0]["url"], "00000", InputConfig(shards="x")))
    assert len(rows) == 3 and len({r["key"] for r in rows}) == 3
    assert {r["prompt"] for r in rows} == {"a prompt from txt", "from json", "third"}
    assert all(r["status"] == "ok" for r in rows)


def test_list_shards_globs_and_braces(tmp_path):
    pack(SAMPLES, str(tmp_path), shard_size=2)
    st = StorageOptions()
    allz = list_shards(str(tmp_path / "*.tar"), st)
    assert len(allz) == 4
    assert list_shards(str(tmp_path / "shard-{000001..000002}.tar"), st) == allz[1:3]
    assert list_shards(f"{tmp_path}/shard-000000.tar {tmp_path}/shard-00000[0-1].tar", st) == allz[:2]


def test_read_rows_and_errors(tmp_path):
    vid = (SAMPLES / _manifest()[0]["file"]).read_bytes()
    members = [
        ("good.mp4", vid), ("good.json", json.dumps({"prompt": "p1", "x": 1}).encode()),
        ("noprompt.mp4", vid),
        ("badutf.mp4", vid), ("badutf.txt", b"\xff\xfe bad"),
        ("../../etc/evil.mp4", vid), ("../../etc/evil.json", b'{"prompt": "p2"}'),
        ("onlyjson.json", b'{"prompt": "p3"}'),
        ("good.mp4", vid), ("good.json", b'{"prompt": "dup"}'),
    ]
    shard = tmp_path / "s.tar"
    shard.write_bytes(tar_bytes(members))
    rows = list(iter_shard(str(shard), "00000", InputConfig(shards="x")))
    by = {r["key"]: r for r in rows}
    assert [r["key"] for r in rows] == ["good", "noprompt", "badutf", "../../etc/evil", "onlyjson", "good#dup1"]
    assert by["good"]["status"] == "ok" and by["good"]["prompt"] == "p1" and by["good"]["video"] == vid
    assert by["good"]["row_id"] == make_row_id(str(shard), "good")
    assert by["noprompt"]["error"].startswith("no prompt")
    assert "UTF-8" in by["badutf"]["error"]
    assert by["../../etc/evil"]["status"] == "ok"  # the name is only a key, never a path
    assert by["onlyjson"]["error"].startswith("no video member")
    assert by["good#dup1"]["status"] == "error" and "duplicate key" in by["good#dup1"]["error"]
    assert all(r["error_stage"] == "read" for r in rows if r["status"] == "error")


def test_read_truncated_and_missing_shard(tmp_path):
    vid = (SAMPLES / _manifest()[0]["file"]).read_bytes()
    data = tar_bytes([("a.mp4", vid), ("a.json", b'{"prompt": "p"}'), ("b.mp4", vid), ("b.json", b'{"prompt": "q"}')])
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) - len(vid) // 2 - 2048])
    rows = list(iter_shard(str(cut), "0", InputConfig(shards="x")))
    assert rows[0]["key"] == "a" and rows[0]["status"] == "ok"
    assert all(r["status"] == "error" for r in rows[1:]) and len(rows) >= 2
    gone = list(iter_shard(str(tmp_path / "missing.tar"), "0", InputConfig(shards="x")))
    assert len(gone) == 1 and gone[0]["key"] == "__shard__" and gone[0]["status"] == "error"


def test_max_sample_bytes_enforced(tmp_path):
    shard = tmp_path / "s.tar"
    shard.write_bytes(tar_bytes([("big.mp4", b"x" * 5000), ("big.json", b'{"prompt": "p"}')]))
    rows = list(iter_shard(str(shard), "0", InputConfig(shards="x", max_sample_bytes=1000)))
    assert rows[0]["status"] == "error" and "max_sample_bytes" in rows[0]["error"] and rows[0]["video"] == b""


def test_max_sample_bytes_is_per_sample_not_per_member(tmp_path, monkeypatch):
    """Many members of one key, each under the limit, together over it: the sample is an error row and the
    members past the limit are never read (counted through tarfile's reads)."""
    members = [(f"k.part{i}", b"y" * 400) for i in range(50)] + [("k.mp4", b"x" * 300), ("k.json", b'{"prompt": "p"}')]
    members += [("ok.mp4", b"v" * 300), ("ok.json", b'{"prompt": "q"}')]
    shard = tmp_path / "s.tar"
    shard.write_bytes(tar_bytes(members))
    reads = []
    real = tarfile.ExFileObject.read

    def counting(self, *a, **kw):
        data = real(self, *a, **kw)
        reads.append(len(data))
        return data

    monkeypatch.setattr(tarfile.ExFileObject, "read", counting)
    rows = {r["key"]: r for r in iter_shard(str(shard), "0", InputConfig(shards="x", max_sample_bytes=1000))}
    assert rows["k"]["status"] == "error" and "past max_sample_bytes 1000" in rows["k"]["error"]
    assert rows["ok"]["status"] == "ok" and rows["ok"]["video"] == b"v" * 300
    assert sum(reads) <= 1000 + 300 + 40  # k's reads stopped at the limit; then ok's members


def test_members_per_sample_bounded(tmp_path):
    from pipeline.stages.read import MAX_MEMBERS_PER_SAMPLE

    members = [(f"k.e{i}", b"") for i in range(MAX_MEMBERS_PER_SAMPLE + 10)] + [("k.mp4", b"x"), ("k.json", b'{"prompt": "p"}')]
    shard = tmp_path / "s.tar"
    shard.write_bytes(tar_bytes(members))
    rows = list(iter_shard(str(shard), "0", InputConfig(shards="x")))
    assert len(rows) == 1 and rows[0]["status"] == "error"
    assert f"more than {MAX_MEMBERS_PER_SAMPLE} members" in rows[0]["error"]


def test_pack_and_read_on_s3(s3):  # noqa: F811
    st = StorageOptions(endpoint_url=s3.endpoint_url)
    shards = pack(SAMPLES, "s3://vscore-test/packtest", shard_size=4, storage=st)
    assert all(s["url"].startswith("s3://vscore-test/packtest/shard-") for s in shards)
    listed = list_shards("s3://vscore-test/packtest/shard-*.tar", st)
    assert listed == [s["url"] for s in shards]
    cfg = InputConfig(shards=listed[0], storage=st)
    rows = list(iter_shard(listed[0], "00000", cfg))
    assert len(rows) == 4 and all(r["status"] == "ok" and len(r["video"]) > 1000 for r in rows)


def test_empty_shards(tmp_path):
    """A valid tar with no members yields no rows (nothing to conserve); a zero-byte shard file is an
    error row for the shard."""
    empty_tar = tmp_path / "empty.tar"
    empty_tar.write_bytes(tar_bytes([]))
    assert list(iter_shard(str(empty_tar), "0", InputConfig(shards="x"))) == []
    zero = tmp_path / "zero.tar"
    zero.write_bytes(b"")
    rows = list(iter_shard(str(zero), "0", InputConfig(shards="x")))
    assert len(rows) == 1 and rows[0]["key"] == "__shard__" and rows[0]["status"] == "error"
