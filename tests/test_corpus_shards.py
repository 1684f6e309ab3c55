"""Shards as other tools write them (issue 11, items 1 and 4): written here with the `webdataset` library's
ShardWriter (not vscore's pack) in the layouts of video2dataset, OpenVid-1M and HF-style exports, nested
caption fields, keys with several dots, every container FFmpeg reads, and video members under an extension
the reader does not know. Read with the read stage, decoded with the decoder, real clips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import webdataset as wds

from pipeline.config import DecodeConfig, InputConfig
from pipeline.stages.read import _split_member, iter_shard
from pipeline.tools.pack import pack
from pipeline.video.decode import decode_video
from pipeline.video.sniff import looks_like_video
from tests.media import encode_video

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videos"
BUNDLED = Path(__file__).resolve().parents[1] / "samples" / "videos"


def _clips(root: Path) -> list[tuple[bytes, str]]:
    manifest = root / "manifest.jsonl"
    assert manifest.exists(), f"real clips missing: {manifest}"
    recs = [json.loads(l) for l in manifest.read_text().splitlines() if l.strip()]
    return [((root / r["file"]).read_bytes(), r["prompt"]) for r in recs]


@pytest.fixture(scope="module")
def clips() -> list[tuple[bytes, str]]:
    out = _clips(BUNDLED) + _clips(SHARED)
    assert len(out) == 7 + 16
    return out


def _write(path: Path, samples: list[dict]) -> str:
    pattern = str(path / "shard-%06d.tar")
    with wds.ShardWriter(pattern, maxcount=1000, verbose=0) as sink:
        for s in samples:
            sink.write(s)
    shards = sorted(path.glob("shard-*.tar"))
    assert len(shards) == 1
    return str(shards[0])


def _read(shard: str, **cfg) -> list[dict]:
    return list(iter_shard(shard, "g00000", InputConfig(shards=shard, **cfg)))


def test_video2dataset_layout_reads_caption(tmp_path, clips):
    """The reported case: 16 samples, `.txt` on only some, caption in the json: 16 ok rows (was 8 'no prompt')."""
    samples = []
    for i, (data, prompt) in enumerate(clips[:16]):
        key = f"{i:09d}"
        s = {"__key__": key, "mp4": data, "json": json.dumps({"caption": prompt, "url": f"https://example.org/{i}.mp4",
                                                             "key": key, "status": "success", "duration": 5.0}).encode()}
        if i % 2 == 0:
            s["txt"] = prompt.encode()
        samples.append(s)
    rows = _read(_write(tmp_path, samples))
    assert len(rows) == 16
    assert [r["status"] for r in rows] == ["ok"] * 16, [r["error"] for r in rows if r["error"]]
    assert [r["prompt"] for r in rows] == [p.strip() for _, p in clips[:16]]
    assert [r["key"] for r in rows] == [f"{i:09d}" for i in range(16)]
    assert json.loads(rows[3]["meta_json"])["url"] == "https://example.org/3.mp4"


@pytest.mark.parametrize("layout", ["openvid", "hf_text", "nested", "prompt_first"])
def test_caption_field_layouts(tmp_path, clips, layout):
    data, prompt = clips[0]
    meta = {"openvid": {"caption": prompt}, "hf_text": {"text": prompt}, "nested": {"meta": {"caption": prompt}},
            "prompt_first": {"prompt": "the prompt field", "caption": prompt}}[layout]
    fields = {"nested": ["prompt", "meta.caption"]}.get(layout)
    rows = _read(_write(tmp_path, [{"__key__": "000000042", "mp4": data, "json": json.dumps(meta).encode()}]),
                 **({"prompt_fields": fields} if fields else {}))
    want = "the prompt field" if layout == "prompt_first" else prompt.strip()
    assert [(r["status"], r["prompt"], r["key"]) for r in rows] == [("ok", want, "000000042")]


def test_prompt_field_order_empty_strings_and_txt_fallback(tmp_path, clips):
    data, _ = clips[1]
    rows = _read(_write(tmp_path, [
        {"__key__": "a", "mp4": data, "json": json.dumps({"prompt": "  ", "caption": "from caption"}).encode()},
        {"__key__": "b", "mp4": data, "json": json.dumps({"caption": 7, "meta": {"caption": ""}}).encode(), "txt": b"from txt"},
        {"__key__": "c", "mp4": data, "json": json.dumps({"title": "not a prompt field"}).encode()},
    ]))
    assert [(r["key"], r["status"], r["prompt"]) for r in rows[:2]] == [("a", "ok", "from caption"), ("b", "ok", "from txt")]
    assert rows[2]["status"] == "error" and rows[2]["error_stage"] == "read"
    assert rows[2]["error"] == "no prompt (no non-empty JSON field prompt, caption, text and no .txt)"
    assert rows[2]["video"] == b""


def test_keys_with_several_dots(tmp_path, clips):
    (d1, p1), (d2, p2) = clips[2], clips[3]
    shard = _write(tmp_path, [
        {"__key__": "abc.def", "mp4": d1, "json": json.dumps({"caption": p1}).encode()},
        {"__key__": "abc.deg.v2", "mp4": d2, "txt": p2.encode(), "seg.png": b"\x89PNG not really"},
        {"__key__": "plain", "mp4": d1, "json": json.dumps({"caption": "x"}).encode()},
    ])
    rows = _read(shard)
    assert [(r["key"], r["status"], r["prompt"]) for r in rows] == [
        ("abc.def", "ok", p1.strip()), ("abc.deg.v2", "ok", p2.strip()), ("plain", "ok", "x")]
    assert rows[0]["video"] == d1 and rows[1]["video"] == d2


def test_split_member_rules():
    assert _split_member("abc.def.mp4") == ("abc.def", "mp4")
    assert _split_member("dir/abc.def.JSON") == ("dir/abc.def", "json")
    assert _split_member("abc.def.seg.png", "abc.def", current_exts={"mp4"}) == ("abc.def", "seg.png")
    assert _split_member("abc.json", "abc", current_exts={"mp4"}) == ("abc", "json")
    # the next sample's key extends this one's: its member repeats an extension this sample has
    assert _split_member("abc.def.json", "abc", current_exts={"json", "mp4"}) == ("abc.def", "json")
    assert _split_member("k.seg.bin") == ("k", "seg.bin")  # unknown ext, no current key: WebDataset's first-dot rule
    assert _split_member("a.b/c.d.mpg") == ("a.b/c.d", "mpg")


CONTAINERS = {  # ext: (muxer, codec, size) -- what each extension holds in the wild
    "mpg": ("mpeg", "mpeg2video", (320, 240)),  # MPEG-PS with MPEG-2 video: the reported .mpg
    "mpeg": ("mpeg", "mpeg1video", (320, 240)),
    "ts": ("mpegts", "libx264", (320, 240)),
    "m2ts": ("mpegts", "mpeg2video", (320, 240)),
    "flv": ("flv", "flv", (320, 240)),
    "3gp": ("3gp", "h263", (352, 288)),
    "wmv": ("asf", "wmv2", (320, 240)),
    "m4v": ("mp4", "libx264", (320, 240)),
    "mkv": ("matroska", "mpeg4", (320, 240)),
}


@pytest.fixture(scope="module")
def container_clips() -> dict[str, bytes]:
    return {ext: encode_video(w, h, 24, nframes=48, codec=codec, container=mux)
            for ext, (mux, codec, (w, h)) in CONTAINERS.items()}


def test_every_container_reads_and_decodes(tmp_path, container_clips):
    samples = [{"__key__": f"c_{ext}", ext: data, "json": json.dumps({"caption": f"clip in {ext}"}).encode()}
               for ext, data in container_clips.items()]
    rows = _read(_write(tmp_path, samples))
    assert [(r["key"], r["status"]) for r in rows] == [(f"c_{e}", "ok") for e in container_clips], [r["error"] for r in rows]
    for r in rows:
        dv = decode_video(r["video"], DecodeConfig())
        assert dv.frames.shape[0] == 4 and dv.total_frames >= 46, (r["key"], dv.total_frames)


def test_unknown_extension_sniffed_as_video_only_when_no_known_member(tmp_path, container_clips, clips):
    mpg, mp4 = container_clips["mpg"], clips[0][0]
    jpeg = encode_video(64, 64, 1, nframes=1, codec="mjpeg", pix_fmt="yuvj420p", container="image2pipe")
    rows = _read(_write(tmp_path, [
        {"__key__": "a", "video": mpg, "json": b'{"caption": "sniffed"}'},  # a.video: FFmpeg opens it as MPEG-PS
        {"__key__": "b", "bin": mp4, "jpg": jpeg, "txt": b"mp4 under .bin, a jpg thumbnail"},
        {"__key__": "c", "mp4": mp4, "bin": mpg, "txt": b"known member wins"},
        {"__key__": "d", "jpg": jpeg, "dat": b"\x00" * 4096, "txt": b"no video at all"},
    ]))
    assert [(r["key"], r["status"]) for r in rows] == [("a", "ok"), ("b", "ok"), ("c", "ok"), ("d", "error")]
    assert rows[0]["video"] == mpg and rows[1]["video"] == mp4 and rows[2]["video"] == mp4
    assert rows[3]["error"].startswith("no video member (looked for mp4, webm") and "FFmpeg" in rows[3]["error"]
    assert not looks_like_video(jpeg, "bin")  # a still image is not a video, whatever its name
    assert not looks_like_video(mp4, "json")


def test_pack_and_read_agree_on_every_container(tmp_path, container_clips):
    src = tmp_path / "src"
    src.mkdir()
    for ext, data in container_clips.items():
        (src / f"clip_{ext}.{ext}").write_bytes(data)
        (src / f"clip_{ext}.txt").write_text(f"a clip in {ext}")
    out = pack(src, str(tmp_path / "shards"), shard_size=100)
    assert out[0]["samples"] == len(container_clips)
    rows = _read(out[0]["url"])
    assert len(rows) == len(container_clips)
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    assert sorted(r["prompt"] for r in rows) == sorted(f"a clip in {e}" for e in container_clips)


def test_spans_in_shard_json(tmp_path, clips):
    """`start_s`/`end_s` JSON fields make the sample a clip; a Panda-70M-style list gives one row per span
    (sharing the member's bytes), with its caption; a bad span is a read error row naming it."""
    data, _ = clips[4]
    rows = _read(_write(tmp_path, [
        {"__key__": "one", "mp4": data, "json": json.dumps({"caption": "c", "start_s": "0:00:01.250", "end_s": 3}).encode()},
        {"__key__": "many", "mp4": data, "json": json.dumps({"spans": [["0:00:00.000", "0:00:02.000"], [2, 4.5]],
                                                              "caption": ["first", "second"]}).encode()},
        {"__key__": "bad", "mp4": data, "json": json.dumps({"caption": "c", "start_s": "later"}).encode()},
    ]))
    assert [(r["key"], r["status"], r["prompt"], r["start_s"], r["end_s"]) for r in rows[:3]] == [
        ("one", "ok", "c", 1.25, 3.0), ("many@span0", "ok", "first", 0.0, 2.0), ("many@span1", "ok", "second", 2.0, 4.5)]
    assert rows[1]["video"] is rows[2]["video"] and rows[1]["row_id"] != rows[2]["row_id"]
    assert rows[3]["status"] == "error" and rows[3]["error"] == "bad span: start_s 'later' is neither seconds nor H:MM:SS.mmm"
