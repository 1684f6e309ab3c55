"""The bad-media fixture set of issue 4 item 2: real encoded files (PyAV's bundled FFmpeg encoders, the
Debian `ffmpeg` CLI where a separate process is the right tool), crafted broken files, and their expected
outcome in a run.

`build_fixture_set(dest)` writes every case into `dest` (named `<case>.<ext>`: the extension is the shard
member extension, so a WebM "named .mp4" really travels as `.mp4`) plus a `manifest.jsonl` that
`pipeline.stages.read.pack` understands (`file`, `prompt`, and the expectation as metadata). The `media_set`
pytest fixture builds it once per test session.

Clips are small (mostly 2 s or less, 64-288 px) except the one case whose point is size (8192x8192, 2 frames).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from tests.media import encode_audio_only, encode_vfr_video, encode_video, synthetic_frame

FFMPEG = shutil.which("ffmpeg")
BIG = 8192  # the "real 8192x8192 clip"


# --------------------------------------------------------------------------------------------- encoders

def encode(width: int, height: int, fps: float, nframes: int, codec: str = "libx264", pix_fmt: str = "yuv420p",
           fmt: str = "mp4", options: dict[str, str] | None = None, sar: Fraction | None = None,
           rotation: int | None = None, hflip: bool = False, vflip: bool = False, codec_tag: str | None = None) -> bytes:
    """A clip of `nframes` synthetic frames (tests.media.synthetic_frame), with what tests.media.encode_video
    cannot set: a pixel aspect ratio, a mirrored display matrix, a codec tag (hvc1). x264 runs on one thread
    so the bytes (and what a corruption of them does) are the same on every run."""
    rate = Fraction(fps).limit_denominator(1001)
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=fmt) as out:
        st = out.add_stream(codec, rate=rate)
        st.width, st.height, st.pix_fmt = width, height, pix_fmt
        opts = dict(options or {})
        if codec == "libx264":
            opts.setdefault("preset", "veryfast")
            opts.setdefault("threads", "1")  # x264 output is only reproducible run to run on one thread
        elif codec == "libx265":
            opts.setdefault("preset", "ultrafast")
            opts.setdefault("x265-params", "log-level=error")
        elif codec == "libsvtav1":
            opts.setdefault("preset", "10")
            os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole config at info level otherwise
        elif codec in ("libvpx", "libvpx-vp9"):
            opts.setdefault("deadline", "realtime")
            opts.setdefault("cpu-used", "8")
        if opts:
            st.options = opts
        if sar is not None:
            st.codec_context.sample_aspect_ratio = sar
            st.sample_aspect_ratio = sar
        if codec_tag:
            st.codec_tag = codec_tag
        if rotation is not None or hflip or vflip:
            st.set_display_rotation(rotation or 0, hflip=hflip, vflip=vflip)
        for i in range(nframes):
            frame = av.VideoFrame.from_ndarray(synthetic_frame(i, width, height), format="rgb24").reformat(format=pix_fmt)
            frame.pts = i
            frame.time_base = 1 / rate
            for pkt in st.encode(frame):
                out.mux(pkt)
        for pkt in st.encode():
            out.mux(pkt)
    return buf.getvalue()


_BIG_PYAV = r"""
import io, sys
from fractions import Fraction
import av, numpy as np
n = int(sys.argv[2])
buf = io.BytesIO()
with av.open(buf, "w", format="mp4") as out:
    st = out.add_stream("libx264", rate=2)
    st.width = st.height = n
    st.pix_fmt = "yuv420p"
    st.options = {"preset": "ultrafast"}
    for i in range(2):
        f = av.VideoFrame(n, n, "yuv420p")
        y = np.full((n, n), 90, np.uint8)
        y[n // 8 + i * 64: n // 4 + i * 64, n // 3: n // 2] = 235
        f.planes[0].update(y)
        f.planes[1].update(np.full(n * n // 4, 110, np.uint8))
        f.planes[2].update(np.full(n * n // 4, 150, np.uint8))
        f.pts = i
        f.time_base = Fraction(1, 2)
        for p in st.encode(f):
            out.mux(p)
    for p in st.encode():
        out.mux(p)
open(sys.argv[1], "wb").write(buf.getvalue())
"""


def encode_big(size: int = BIG) -> bytes:
    """A real size x size H.264 clip of 2 frames at 2 fps (x264 ultrafast, flat picture with a moving box).
    Encoded in a separate process so the encoder's ~1 GB working set never lands in the test process: the
    ffmpeg CLI (lavfi color + drawbox) when installed, else PyAV in a child Python."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "big.mp4")
        if FFMPEG:
            src = (f"color=c=0x5a6e96:s={size}x{size}:r=2,"
                   f"drawbox=x={size // 3}+t*128:y={size // 8}:w={size // 6}:h={size // 8}:c=white:t=fill")
            subprocess.run([FFMPEG, "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", src, "-frames:v", "2",
                            "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", path],
                           check=True, timeout=300)
        else:
            subprocess.run([sys.executable, "-c", _BIG_PYAV, path, str(size)], check=True, timeout=300)
        return Path(path).read_bytes()


# --------------------------------------------------------------------------------------------- crafting

_MP4_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts", b"dinf", b"udta"}


def mp4_boxes(data: bytes, start: int = 0, end: int | None = None, path: tuple[bytes, ...] = ()):
    """(offset, size, header size, type, parent path) of every ISO-BMFF box, depth first; stsd entries too."""
    end = len(data) if end is None else end
    off = start
    while off + 8 <= end:
        size, typ = struct.unpack(">I4s", data[off:off + 8])
        hdr = 8
        if size == 1:
            size = struct.unpack(">Q", data[off + 8:off + 16])[0]
            hdr = 16
        elif size == 0:
            size = end - off
        if size < hdr or off + size > end:
            return
        yield off, size, hdr, typ, path
        if typ in _MP4_CONTAINERS:
            yield from mp4_boxes(data, off + hdr, off + size, path + (typ,))
        elif typ == b"stsd":  # full box (4) + entry_count (4), then the sample entries
            yield from mp4_boxes(data, off + hdr + 8, off + size, path + (typ,))
        off += size


def mp4_claim_size(data: bytes, width: int, height: int) -> bytes:
    """Rewrite the frame size an mp4/mov *container* declares: the track header (tkhd width/height, 16.16)
    and the visual sample entry (avc1/hvc1/jpeg/...: 16-bit width/height). The bitstream is untouched."""
    b = bytearray(data)
    n = 0
    for off, _size, hdr, typ, path in list(mp4_boxes(bytes(b))):
        if typ == b"tkhd":
            version = b[off + hdr]
            base = off + hdr + (92 if version == 1 else 80)  # after times, ids, layer, volume and the matrix
            struct.pack_into(">II", b, base, (width & 0xFFFF) << 16, (height & 0xFFFF) << 16)
            n += 1
        elif path and path[-1] == b"stsd":
            struct.pack_into(">HH", b, off + hdr + 24, width, height)  # SampleEntry(8) + VisualSampleEntry pre_defined/reserved(16)
            n += 1
    if n < 2:
        raise ValueError("no tkhd / sample entry found")
    return bytes(b)


def jpeg_claim_size(data: bytes, width: int, height: int) -> bytes:
    """Rewrite the size every baseline JPEG frame header (SOF0: FFC0 len(2) precision(1) height(2) width(2))
    in the file claims. 0xFF in entropy-coded data is always stuffed (FF00), so FFC0 only marks a SOF0."""
    b = bytearray(data)
    i = n = 0
    while (i := b.find(b"\xff\xc0", i)) >= 0:
        struct.pack_into(">HH", b, i + 5, height, width)
        n += 1
        i += 2
    if not n:
        raise ValueError("no SOF0 marker")
    return bytes(b)


def mdat_range(data: bytes) -> tuple[int, int]:
    for off, size, hdr, typ, _ in mp4_boxes(data):
        if typ == b"mdat":
            return off + hdr, off + size
    raise ValueError("no mdat")


def corrupt_mdat(data: bytes, nbytes: int = 96, seed: int = 7) -> bytes:
    """Flip (XOR 0xFF) `nbytes` bytes spread over the middle third of the media data: a damaged bitstream
    whose container is intact."""
    lo, hi = mdat_range(data)
    third = (hi - lo) // 3
    rng = np.random.default_rng(seed)
    b = bytearray(data)
    for pos in rng.choice(np.arange(lo + third, hi - third), size=min(nbytes, third), replace=False):
        b[int(pos)] ^= 0xFF
    return bytes(b)


def y4m_claim(width: int, height: int, payload: int = 20_000) -> bytes:
    """A YUV4MPEG2 header claiming width x height, followed by one FRAME of a few KB (not the 1.5*W*H bytes
    the header promises)."""
    head = f"YUV4MPEG2 W{width} H{height} F10:1 Ip A1:1 C420jpeg\nFRAME\n".encode()
    return head + bytes(np.random.default_rng(3).integers(0, 256, payload, dtype=np.uint8))


LFS_POINTER = (b"version https://git-lfs.github.com/spec/v1\n"
               b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
               b"size 1048576\n")


# --------------------------------------------------------------------------------------------- the cases

@dataclass(frozen=True)
class Case:
    name: str  # file stem; also the WebDataset key after packing
    ext: str  # file / shard member extension
    expect: str  # "ok" or "error"
    build: Callable[[], bytes]
    note: str
    match: str | None = None  # regex an error message must match (decode_video / the decode stage)
    stage: str = "decode"  # error_stage expected in a run (the read stage catches the empty member first)
    frames: int | None = None  # total frames the plan must use (ok cases, default config)
    tags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def file(self) -> str:
        return f"{self.name}.{self.ext}"


def _two_seconds(**kw) -> bytes:
    return encode(160, 96, 12, 24, **kw)


def _truncated_moov_at_end() -> bytes:
    data = encode_video(160, 96, 24, nframes=48)  # the mp4 muxer writes moov after mdat
    assert data.rfind(b"moov") > data.find(b"mdat")
    return data[: len(data) // 2]


def _truncated_faststart() -> bytes:
    data = encode_video(160, 96, 24, nframes=48, faststart=True)
    return data[: len(data) // 2]


def _webm_vp9() -> bytes:
    return encode(160, 96, 12, 24, codec="libvpx-vp9", fmt="webm")


CASES: list[Case] = [
    Case("zero_bytes", "mp4", "error", lambda: b"", "0-byte file", match=r"empty video \(0 bytes\)", stage="read"),
    Case("truncated_moov_at_end", "mp4", "error", _truncated_moov_at_end,
         "moov at the end, file cut in half: no index left", match=r"cannot open container"),
    Case("truncated_faststart", "mp4", "ok", _truncated_faststart,
         "moov first, file cut in half: the playable half is re-planned on the decoded frames"),
    Case("corrupt_mdat", "mp4", "ok", lambda: corrupt_mdat(encode(160, 96, 24, 48)),
         "96 bytes flipped in the middle third of mdat: decoding stops at the first packet the decoder rejects "
         "(as torchvision's reader does) and the frames before it are re-planned"),
    Case("audio_only", "mp4", "error", lambda: encode_audio_only(1.0), "AAC only", match=r"no video stream"),
    Case("one_frame", "mp4", "error", lambda: encode(160, 96, 24, 1),
         "1 frame: qwen-vl-utils needs >= 2 (nframes in [2, total])", match=r"cannot sample frames"),
    Case("two_frames", "mp4", "ok", lambda: encode(160, 96, 24, 2), "2 frames: the smallest plan", frames=2),
    Case("vfr", "mp4", "ok", lambda: encode_vfr_video(160, 96, [0, 0.1, 0.15, 0.5, 0.55, 0.6, 1.0, 1.4, 1.45, 1.9]),
         "variable frame rate (1 ms time base, uneven gaps)", frames=10),
    Case("rotate_90", "mp4", "ok", lambda: _two_seconds(rotation=90), "display matrix: 90 degrees CCW",
         frames=24, tags=("geometry",)),
    Case("rotate_90_hflip", "mp4", "ok", lambda: _two_seconds(rotation=90, hflip=True),
         "display matrix: 90 degrees CCW then mirrored", frames=24, tags=("geometry",)),
    Case("sar_2_1", "mp4", "ok", lambda: _two_seconds(sar=Fraction(2, 1)),
         "non-square pixels: 160x96 coded, SAR 2:1, shown as 320x96", frames=24, tags=("geometry",)),
    Case("odd_287x159_h264_444", "mp4", "ok", lambda: encode(287, 159, 12, 24, pix_fmt="yuv444p"),
         "odd size, H.264 High 4:4:4 (4:2:0 H.264 cannot be odd)", frames=24),
    Case("odd_287x159_vp9", "webm", "ok", lambda: encode(287, 159, 12, 24, codec="libvpx-vp9", fmt="webm"),
         "odd size, VP9 4:2:0 in WebM", frames=24),
    Case("av1", "mp4", "ok", lambda: _two_seconds(codec="libsvtav1"), "AV1 (SVT-AV1) in mp4", frames=24),
    Case("vp9", "webm", "ok", _webm_vp9, "VP9 in WebM", frames=24),
    Case("hevc_8bit", "mp4", "ok", lambda: _two_seconds(codec="libx265", codec_tag="hvc1"), "HEVC Main, hvc1",
         frames=24),
    Case("hevc_10bit", "mp4", "ok", lambda: _two_seconds(codec="libx265", pix_fmt="yuv420p10le", codec_tag="hvc1"),
         "HEVC Main 10", frames=24),
    Case("prores", "mov", "ok", lambda: encode(160, 96, 12, 24, codec="prores_ks", pix_fmt="yuv422p10le", fmt="mov"),
         "ProRes 422 (10-bit 4:2:2) in mov", frames=24),
    Case("mpeg4_part2", "mp4", "ok", lambda: _two_seconds(codec="mpeg4"), "MPEG-4 Part 2 (mp4v)", frames=24),
    Case("mjpeg", "avi", "ok", lambda: encode(160, 96, 12, 24, codec="mjpeg", pix_fmt="yuvj420p", fmt="avi"),
         "Motion JPEG in AVI", frames=24),
    Case("webm_named_mp4", "mp4", "ok", _webm_vp9, "a WebM file under a .mp4 name (content is probed, not the name)",
         frames=24),
    Case("animated_gif", "gif", "ok", lambda: encode(120, 80, 10, 20, codec="gif", pix_fmt="rgb8", fmt="gif"),
         "animated GIF, 20 frames (no frame count in the container: packets are counted)", frames=20),
    Case("lfs_pointer", "mp4", "error", lambda: LFS_POINTER, "a Git LFS pointer (text) named .mp4",
         match=r"cannot open container"),
    Case("big_8192", "mp4", "ok", encode_big, f"a real {BIG}x{BIG} H.264 clip, 2 frames (~100 MB per decoded frame)",
         frames=2, tags=("big",)),
    Case("claims_65535_mp4_header", "mp4", "ok", lambda: mp4_claim_size(encode(160, 96, 12, 24), 65535, 65535),
         "tkhd + avc1 claim 65535x65535, the SPS says 160x96: FFmpeg sizes the decoder from the bitstream",
         frames=24, tags=("claim",)),
    Case("claims_65535_mjpeg", "mov", "error",
         lambda: jpeg_claim_size(mp4_claim_size(encode(160, 96, 12, 24, codec="mjpeg", pix_fmt="yuvj420p", fmt="mov"),
                                                65535, 65535), 65535, 65535),
         "container and every JPEG header claim 65535x65535: refused before any frame buffer",
         match=r"decodable frame|max_decoded_pixels", tags=("claim",)),
    Case("claims_65535_y4m", "mp4", "error", lambda: y4m_claim(65535, 65535),
         "YUV4MPEG2 header claiming 65535x65535 (named .mp4)", match=r"cannot open container|max_decoded_pixels",
         tags=("claim",)),
    Case("claims_16000_y4m", "mp4", "error", lambda: y4m_claim(16000, 16000),
         "YUV4MPEG2 header claiming 16000x16000: valid for FFmpeg, above max_decoded_pixels",
         match=r"frame size 16000x16000 exceeds max_decoded_pixels", tags=("claim",)),
]

CASES_BY_NAME = {c.name: c for c in CASES}
_BUILT: dict[str, bytes] = {}


def case_bytes(name: str) -> bytes:
    """The bytes of one case, built once per process."""
    if name not in _BUILT:
        _BUILT[name] = CASES_BY_NAME[name].build()
    return _BUILT[name]


def build_fixture_set(dest: str | Path) -> list[dict]:
    """Write every case and a manifest.jsonl (for pipeline.stages.read.pack) into `dest`; return the manifest."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    manifest = []
    for c in CASES:
        (dest / c.file).write_bytes(case_bytes(c.name))
        manifest.append({"file": c.file, "prompt": f"bad-media fixture {c.name}: {c.note}", "case": c.name,
                         "expect": c.expect, "expect_stage": c.stage if c.expect == "error" else None})
    (dest / "manifest.jsonl").write_text("".join(json.dumps(m) + "\n" for m in manifest))
    return manifest


@pytest.fixture(scope="session")
def media_set(tmp_path_factory) -> Path:
    """The whole fixture set on disk (built once per session); cases are also in memory via case_bytes."""
    dest = tmp_path_factory.mktemp("bad_media")
    build_fixture_set(dest)
    return dest
