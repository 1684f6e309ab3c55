"""Issue 4 item 2, bad media: every fixture of tests/media_fixtures.py becomes frames or one decode error
row (one line, never a crash, never a hang, bounded memory); the limits hold before large allocations; the
display geometry is tested in both settings; and one run of the whole fixture set through the real pipeline
(local shards, local Ray, tiny model) conserves rows within a fixed time bound."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest

from pipeline.config import DecodeConfig, ScoreConfig
from pipeline.video.decode import DecodeError, decode_video, probe_video
from pipeline.stages.decode import DecodeStage
from pipeline.vs2.frames import frame_indices, smart_nframes
from pipeline.schema import make_row_id
from tests.media import decode_all_frames
from tests.media_fixtures import (
    BIG,
    CASES,
    CASES_BY_NAME,
    FFMPEG,
    case_bytes,
    encode,
    media_set,  # noqa: F401
    mp4_claim_size,
)

ROOT = Path(__file__).resolve().parent.parent
CFG = DecodeConfig()
PLAYER = DecodeConfig(apply_rotation=True)
E2E_BOUND_S = 240.0  # the whole fixture set through read -> decode -> score -> write on this 2-core machine


def _stage_row(data: bytes, cfg: DecodeConfig = CFG) -> dict:
    return DecodeStage(cfg).decode_row(data, "ok", None, None)


# --- each case: outcome and row contract ------------------------------------------------------------------

@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_outcome(case):
    data = case_bytes(case.name)
    for cfg in (CFG, PLAYER):
        t0 = time.monotonic()
        row = _stage_row(data, cfg)
        assert time.monotonic() - t0 < 30, "decode must stay far from any hang"
        if case.expect == "error":
            assert row["status"] == "error" and row["error_stage"] == "decode", row["error"]
            assert row["error"] and "\n" not in row["error"] and len(row["error"]) <= 500
            assert case.match is None or re.search(case.match, row["error"]), row["error"]
            assert row["frames"].shape == (0, 0, 0, 3) and row["num_frames"] == 0
            with pytest.raises(DecodeError):
                decode_video(data, cfg)
        else:
            assert row["status"] == "ok", row["error"]
            dv = decode_video(data, cfg)
            n, h, w, c = dv.frames.shape
            assert c == 3 and dv.frames.dtype == np.uint8 and dv.frames.flags["C_CONTIGUOUS"]
            assert n >= 2 and n % 2 == 0 and h % 28 == 0 and w % 28 == 0 and h * w <= CFG.max_pixels
            assert dv.indices == frame_indices(dv.total_frames, smart_nframes(dv.total_frames, dv.src_fps, cfg))
            if case.frames is not None:
                assert dv.total_frames == case.frames and not dv.replanned
            assert dv.frames.std() > 5  # a picture, not a blank buffer
            assert row["num_frames"] == n and json.loads(row["frame_indices"]) == dv.indices


def test_replanned_cases_keep_the_playable_part():
    """Truncated (moov first) and damaged-bitstream files: planned on the frames that really decode up to
    the first hard decoder error, exactly what an independent full decode finds."""
    for name in ("truncated_faststart", "corrupt_mdat"):
        data = case_bytes(name)
        dv = decode_video(data, CFG)
        decodable = len(decode_all_frames(data))
        assert probe_video(data)["total_frames"] == 48 and dv.total_frames == decodable >= 2, name
        assert dv.replanned == (decodable < 48), name
    assert decode_video(case_bytes("truncated_faststart"), CFG).replanned


def test_one_and_two_frame_clips():
    with pytest.raises(DecodeError, match="cannot sample frames"):
        decode_video(case_bytes("one_frame"), CFG)
    dv = decode_video(case_bytes("two_frames"), CFG)
    assert dv.indices == [0, 1] and dv.frames.shape == (2, 252, 420, 3)


def test_codecs_decode_the_same_picture():
    """AV1, VP9, HEVC 8/10-bit, ProRes, MPEG-4 Part 2, MJPEG and the renamed WebM all carry the same
    synthetic content at 160x96 / 12 fps: same plan, and pictures close to the H.264 reference (lossy codecs
    at default quality; the 10-bit and 4:2:2 paths go through the same rgb24 conversion)."""
    ref = decode_video(encode(160, 96, 12, 24, options={"crf": "12"}), CFG)
    for name in ("av1", "vp9", "hevc_8bit", "hevc_10bit", "prores", "mpeg4_part2", "mjpeg", "webm_named_mp4"):
        dv = decode_video(case_bytes(name), CFG)
        assert dv.frames.shape == ref.frames.shape and dv.indices == ref.indices, name
        diff = np.abs(dv.frames.astype(np.int16) - ref.frames).mean()
        assert diff < 12, (name, diff)
    assert probe_video(case_bytes("webm_named_mp4"))["frames_from"] == "packets"  # matroska: counted


def test_odd_sizes():
    for name in ("odd_287x159_h264_444", "odd_287x159_vp9"):
        p = probe_video(case_bytes(name))
        assert (p["width"], p["height"]) == (287, 159)
        assert decode_video(case_bytes(name), CFG).frames.shape == (4, 252, 448, 3)


# --- geometry: display matrix and pixel aspect, both settings ------------------------------------------------

def test_rotation_both_settings():
    data = case_bytes("rotate_90")
    plain = decode_video(data, CFG)
    assert plain.rotation == 90 and not plain.mirrored
    assert plain.frames.shape == (4, 252, 420, 3)  # default: coded orientation, like decord/torchvision
    shown = decode_video(data, PLAYER)
    assert shown.frames.shape == (4, 420, 252, 3)  # player: portrait, planned on the displayed size
    assert np.array_equal(shown.frames, np.rot90(plain.frames, 1, axes=(1, 2)))


def test_mirrored_display_matrix_both_settings():
    """A matrix with a mirror reads back as rotation 90 (av_display_rotation_get drops the flip); the player
    setting applies the mirror too, read from the matrix itself."""
    data = case_bytes("rotate_90_hflip")
    plain = decode_video(data, CFG)
    assert plain.rotation == 90 and plain.mirrored and plain.frames.shape == (4, 252, 420, 3)
    shown = decode_video(data, PLAYER)
    assert np.array_equal(shown.frames, np.rot90(plain.frames, 1, axes=(1, 2))[:, :, ::-1])
    assert not np.array_equal(shown.frames, np.rot90(plain.frames, 1, axes=(1, 2)))


def test_non_square_pixels_both_settings():
    data = case_bytes("sar_2_1")
    plain = decode_video(data, CFG)
    assert plain.sample_aspect_ratio == 2.0
    assert plain.frames.shape == (4, 252, 420, 3)  # default: coded pixels, SAR ignored (same plan as 160x96 square)
    shown = decode_video(data, PLAYER)  # player: 160x96 at SAR 2:1 is shown 320x96
    assert shown.frames.shape == (4, 196, 588, 3)
    full = decode_all_frames(data)
    for dv in (plain, shown):
        for pos, fi in enumerate(dv.indices):
            ref = full[fi].reformat(width=dv.width, height=dv.height, format="rgb24", interpolation="BICUBIC").to_ndarray()
            assert np.abs(dv.frames[pos].astype(np.int16) - ref).max() <= 1


@pytest.mark.skipif(FFMPEG is None, reason="needs the ffmpeg CLI (the player reference)")
@pytest.mark.parametrize("name", ["rotate_90", "rotate_90_hflip"])
def test_player_setting_matches_ffmpeg_autorotate(name, tmp_path):
    """The ffmpeg CLI (autorotate on, as players) shows the same first frame as apply_rotation=True."""
    src = tmp_path / f"{name}.mp4"
    src.write_bytes(case_bytes(name))
    dv = decode_video(src.read_bytes(), PLAYER)
    h, w = dv.height, dv.width
    raw = subprocess.run([FFMPEG, "-nostdin", "-v", "error", "-i", str(src), "-frames:v", "1", "-vf",
                          f"scale={w}:{h}:flags=bicubic", "-pix_fmt", "rgb24", "-f", "rawvideo", "-"],
                         check=True, capture_output=True, timeout=60).stdout
    cli = np.frombuffer(raw, np.uint8).reshape(h, w, 3).astype(np.int16)
    ours = dv.frames[0].astype(np.int16)
    assert np.abs(ours - cli).mean() < 2.0
    for wrong in (ours[::-1], ours[:, ::-1]):  # the check can tell a mirror apart
        assert np.abs(wrong - cli).mean() > 10


# --- limits ----------------------------------------------------------------------------------------------

def test_max_bytes():
    data = case_bytes("two_frames")
    with pytest.raises(DecodeError, match=f"video is {len(data)} bytes > max_bytes={len(data) - 1}"):
        decode_video(data, CFG, max_bytes=len(data) - 1)
    with pytest.raises(DecodeError, match="max_bytes"):
        decode_video(data, DecodeConfig(max_bytes=100))
    with pytest.raises(DecodeError, match="max_bytes=100"):  # the smaller of the two wins
        decode_video(data, DecodeConfig(max_bytes=len(data)), max_bytes=100)
    assert decode_video(data, DecodeConfig(max_bytes=len(data)), max_bytes=len(data)).frames.shape[0] == 2
    row = _stage_row(data, DecodeConfig(max_bytes=10))
    assert row["status"] == "error" and row["error_stage"] == "decode" and "max_bytes" in row["error"]


def test_max_duration_with_and_without_a_container_frame_count():
    with pytest.raises(DecodeError, match="max_duration_s"):
        decode_video(case_bytes("vp9"), DecodeConfig(max_duration_s=1.0))  # webm: packets counted, stops early
    with pytest.raises(DecodeError, match="max_duration_s"):
        decode_video(case_bytes("animated_gif"), DecodeConfig(max_duration_s=1.0))
    with pytest.raises(DecodeError, match="max_duration_s"):
        decode_video(case_bytes("hevc_8bit"), DecodeConfig(max_duration_s=1.0))
    assert decode_video(case_bytes("hevc_8bit"), DecodeConfig(max_duration_s=2.0)).total_frames == 24


def test_decode_timeout(monkeypatch):
    """A fake clock that advances 1 s per reading: the budget runs out mid-decode, between frames."""
    import pipeline.video.decode as dec

    data = case_bytes("hevc_8bit")
    with pytest.raises(DecodeError, match=r"decode timeout: over decode_timeout_s=1e-06s"):
        decode_video(data, DecodeConfig(decode_timeout_s=1e-6))
    t = [0.0]

    def clock() -> float:
        t[0] += 1.0
        return t[0]

    monkeypatch.setattr(dec, "_clock", clock)
    with pytest.raises(DecodeError, match=r"decode timeout: over decode_timeout_s=6s while decoding frame \d+"):
        decode_video(data, DecodeConfig(decode_timeout_s=6))
    row = _stage_row(data, DecodeConfig(decode_timeout_s=6))
    assert row["status"] == "error" and row["error_stage"] == "decode" and row["error"].startswith("decode timeout")
    monkeypatch.setattr(dec, "_clock", time.monotonic)
    assert decode_video(data, DecodeConfig(decode_timeout_s=60)).total_frames == 24


def test_pixel_limit_covers_claims_in_container_and_bitstream():
    # the container claims 65535x65535, the H.264 bitstream 160x96: FFmpeg sizes everything from the
    # bitstream, which is the truth (nothing large is ever allocated: see the memory test)
    dv = decode_video(case_bytes("claims_65535_mp4_header"), CFG)
    assert dv.frames.shape == (4, 252, 420, 3)
    # ...and the limit applies to what the bitstream says, whatever the container claims
    with pytest.raises(DecodeError, match="frame size 160x96 exceeds max_decoded_pixels=15359"):
        decode_video(case_bytes("claims_65535_mp4_header"), DecodeConfig(max_decoded_pixels=160 * 96 - 1))
    for name in ("claims_65535_mjpeg", "claims_65535_y4m", "claims_16000_y4m"):
        with pytest.raises(DecodeError):
            decode_video(case_bytes(name), CFG)
    big = case_bytes("big_8192")
    with pytest.raises(DecodeError, match=f"frame size {BIG}x{BIG} exceeds max_decoded_pixels"):
        decode_video(big, DecodeConfig(max_decoded_pixels=4096 * 4096))
    assert decode_video(big, DecodeConfig(max_decoded_pixels=BIG * BIG)).frames.shape == (2, 756, 756, 3)


_MEMORY_PROBE = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from pipeline.config import DecodeConfig
    from pipeline.video.decode import DecodeError, decode_video

    def status_mb(field):  # VmHWM (peak) / VmRSS of this process's own address space, in MB
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(field)

    def reset_peak():  # Linux >= 4.0: "5" resets VmHWM to the current RSS
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    out = {}
    # cheapest first, so that without clear_refs each step is still measured against the peak before it
    for name, path, kw in json.loads(sys.argv[2]):
        data = open(path, "rb").read()
        before = status_mb("VmRSS") if reset_peak() else status_mb("VmHWM")
        try:
            res = list(decode_video(data, DecodeConfig(**kw)).frames.shape)
        except DecodeError as e:
            res = "error: " + str(e)
        out[name] = {"result": res, "peak_increase_mb": status_mb("VmHWM") - before}
    print(json.dumps(out))
""")


@pytest.mark.timeout(300)
def test_memory_stays_bounded(tmp_path):
    """Peak RSS in a fresh process: refusing the 8192x8192 clip under a lowered limit allocates no frame
    (the decoder that probes the container is also capped), even when the container lies small; decoding it
    under the default limit costs a few decoded frames (~100 MB each), not more."""
    big = case_bytes("big_8192")
    (tmp_path / "big.mp4").write_bytes(big)
    (tmp_path / "big_claims_small.mp4").write_bytes(mp4_claim_size(big, 160, 96))
    (tmp_path / "mjpeg_claims.mov").write_bytes(case_bytes("claims_65535_mjpeg"))
    (tmp_path / "y4m_claims.mp4").write_bytes(case_bytes("claims_16000_y4m"))
    low = {"max_decoded_pixels": 4096 * 4096}
    steps = [("mjpeg_65535", str(tmp_path / "mjpeg_claims.mov"), {}),
             ("y4m_16000", str(tmp_path / "y4m_claims.mp4"), {}),
             ("big_low_limit", str(tmp_path / "big.mp4"), low),
             ("big_claims_small_low_limit", str(tmp_path / "big_claims_small.mp4"), low),
             ("big_default", str(tmp_path / "big.mp4"), {})]
    proc = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(ROOT), json.dumps(steps)],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in ("mjpeg_65535", "y4m_16000", "big_low_limit", "big_claims_small_low_limit"):
        assert str(res[name]["result"]).startswith("error"), res
        assert res[name]["peak_increase_mb"] < 64, res  # one 8192x8192 yuv420 frame alone is 96 MB
    assert "max_decoded_pixels" in res["big_low_limit"]["result"]
    assert "max_decoded_pixels" in res["big_claims_small_low_limit"]["result"]
    assert res["big_default"]["result"] == [2, 756, 756, 3]
    assert 96 < res["big_default"]["peak_increase_mb"] < 450, res
    print("\npeak RSS increase (MB):", {k: round(v["peak_increase_mb"]) for k, v in res.items()})


_FUZZ = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    from pipeline.config import DecodeConfig
    from pipeline.video.decode import DecodeError, decode_video
    from tests.media_fixtures import CASES, case_bytes
    rng = np.random.default_rng(int(sys.argv[2]))
    names = [c.name for c in CASES if c.name not in ("big_8192", "zero_bytes")]
    counts = {"ok": 0, "error": 0}
    worst = 0.0
    for it in range(int(sys.argv[3])):
        b = bytearray(case_bytes(names[it % len(names)]))
        mode = it % 3
        if mode == 0:  # scattered byte changes
            for pos in rng.integers(0, len(b), int(rng.integers(1, 50))):
                b[int(pos)] = int(rng.integers(0, 256))
        elif mode == 1:  # truncation anywhere
            b = b[: int(rng.integers(1, len(b)))]
        else:  # a run of random bytes
            s = int(rng.integers(0, len(b)))
            e = min(len(b), s + int(rng.integers(1, 2000)))
            b[s:e] = rng.integers(0, 256, e - s, dtype=np.uint8).tobytes()
        t = time.monotonic()
        try:
            decode_video(bytes(b), DecodeConfig(decode_timeout_s=30))
            counts["ok"] += 1
        except DecodeError as e:
            assert str(e) and "\\n" not in str(e), str(e)
            counts["error"] += 1
        worst = max(worst, time.monotonic() - t)
    print(json.dumps({**counts, "worst_s": worst}))
""")


@pytest.mark.timeout(300)
def test_mutated_fixtures_never_crash():
    """Seeded mutations (byte flips, truncations, random runs) of every small fixture, in a child process so a
    crash inside FFmpeg would show as a signal instead of killing the test session: each input ends as frames
    or a one-line DecodeError, quickly."""
    proc = subprocess.run([sys.executable, "-c", _FUZZ, str(ROOT), "20240601", "270"], capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["ok"] + res["error"] == 270 and res["ok"] > 0 and res["error"] > 0
    assert res["worst_s"] < 10, res


# --- the whole fixture set through the pipeline ------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(600)
def test_run_over_the_fixture_set(ray_local, media_set, model_dir, tmp_path):  # noqa: F811
    from pipeline.run.job import run
    from pipeline.tools.pack import pack

    shards = pack(media_set, str(tmp_path / "shards"), shard_size=6)
    n_packed = sum(s["samples"] for s in shards)
    assert n_packed == len(CASES)
    out = tmp_path / "scores"
    cfg = ScoreConfig.model_validate({
        "input": {"shards": str(tmp_path / "shards" / "shard-*.tar"), "samples_per_block": 2},
        "decode": {"actors": 1, "num_cpus": 0.25, "batch_size": 2},
        "engine": {"kind": "transformers", "model": str(model_dir), "dtype": "float32", "device": "cpu", "actors": 1,
                   "num_gpus": 0, "num_cpus": 0.5, "batch_size": 4, "batches_in_flight": 1},
        "sampling": {"max_new_tokens": 8},
        "output": {"path": str(out), "shards_per_group": 2},
        "ray": {"progress_bars": False},
    })
    t0 = time.monotonic()
    summary = run(cfg, progress_every_s=60)
    wall = time.monotonic() - t0
    table = pads.dataset(str(out), format="parquet", partitioning="hive").to_table()
    rows = table.to_pylist()
    # rows conserved: one per packed sample, every row_id once
    assert len(rows) == n_packed == summary["rows_out"] == summary["rows_in"]
    ids = [r["row_id"] for r in rows]
    assert len(set(ids)) == n_packed
    assert set(ids) == {make_row_id(r["shard"], r["key"]) for r in rows}
    by_case = {json.loads(r["meta_json"])["case"]: r for r in rows}
    assert set(by_case) == set(CASES_BY_NAME)
    for name, case in CASES_BY_NAME.items():
        r = by_case[name]
        if case.expect == "ok":
            assert r["status"] == "ok", (name, r["error_stage"], r["error"])
            assert r["num_frames"] >= 2 and r["width"] % 28 == 0 and r["height"] % 28 == 0, name
        else:
            assert r["status"] == "error" and r["error_stage"] == case.stage, (name, r["error_stage"], r["error"])
            assert r["error"] and "\n" not in r["error"], name
    n_err = sum(c.expect == "error" for c in CASES)
    assert summary["ok"] == n_packed - n_err and summary["errors"] == n_err
    assert summary["errors_by_stage"] == {"decode": n_err - 1, "read": 1}
    # error rows are also in the quarantine table
    quarantine = pads.dataset(summary["quarantine"], format="parquet", partitioning="hive").to_table()
    assert sorted(quarantine.column("row_id").to_pylist()) == sorted(r["row_id"] for r in rows if r["status"] == "error")
    print(f"\nbad-media run: {n_packed} rows in {wall:.1f}s (bound {E2E_BOUND_S:.0f}s), summary wall {summary['wall_s']}s")
    assert wall < E2E_BOUND_S
