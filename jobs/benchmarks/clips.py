"""The clips the measurements run on: the real clips if present, and generated H.264 clips (cached
under the work directory)."""

from __future__ import annotations

import io
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

from .common import REAL_DIRS, VIDEO_EXTS


def real_clips() -> tuple[list[Path], str]:
    for d in REAL_DIRS:
        if d.is_dir():
            files = sorted(p for p in d.rglob("*") if p.suffix.lower() in VIDEO_EXTS and p.is_file())
            if files:
                return files, str(d)
    return [], ""


def _texture(h: int, w: int, seed: int):
    """Smooth multi-octave noise with fine detail (uint8 RGB): camera-pan content that x264 codes at
    realistic bitrates (~1 Mbps at 480p, ~1.8 Mbps at 720p with crf 23)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.float32)
    for scale, amp in ((64, 1.0), (16, 0.5), (4, 0.35), (2, 0.3)):
        small = rng.random(((h + scale - 1) // scale + 1, (w + scale - 1) // scale + 1, 3), dtype=np.float32)
        big = np.kron(small, np.ones((scale, scale, 1), np.float32))[:h, :w]
        k = max(1, scale // 2)
        c = np.cumsum(np.pad(big, ((k, k), (0, 0), (0, 0)), mode="edge"), 0)
        big = (c[2 * k:] - c[:-2 * k]) / (2 * k)
        c = np.cumsum(np.pad(big, ((0, 0), (k, k), (0, 0)), mode="edge"), 1)
        big = (c[:, 2 * k:] - c[:, :-2 * k]) / (2 * k)
        img += amp * big[:h, :w]
    img = (img - img.min()) / max(1e-6, float(img.max() - img.min()))
    return (img * 220 + 18).astype(np.uint8)


def encode_clip(width: int, height: int, fps: float = 24.0, seconds: float = 5.0, seed: int = 0,
                crf: int = 23, preset: str = "medium", gop: int | None = None, textured: bool = True) -> bytes:
    """An H.264 mp4 (yuv420p): a pan across a textured picture with a moving box and light grain.
    x264 defaults otherwise (GOP 250, 3 B-frames, b-pyramid)."""
    import av
    import numpy as np

    n = int(round(fps * seconds))
    rng = np.random.default_rng(seed + 1)
    tex = _texture(height * 2, width * 2, seed) if textured else None
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        st = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        st.width, st.height, st.pix_fmt = width, height, "yuv420p"
        st.options = {"preset": preset, "crf": str(crf)}
        if gop is not None:
            st.codec_context.gop_size = gop
        for i in range(n):
            if tex is not None:
                y, x = int(i * height / n), int(i * width / n)
                f = tex[y:y + height, x:x + width].astype(np.int16)
                f += rng.integers(-6, 7, size=f.shape, dtype=np.int16)
            else:
                f = np.full((height, width, 3), (i * 9) % 200 + 20, np.int16)
            s = max(2, height // 6)
            cx = (i * 7) % max(1, width - s)
            cy = (height // 3 + int(height / 12 * np.sin(i / 6))) % max(1, height - s)
            f[cy:cy + s, cx:cx + s] = (250, 240, 60)
            fr = av.VideoFrame.from_ndarray(np.clip(f, 0, 255).astype(np.uint8), format="rgb24").reformat(format="yuv420p")
            fr.pts = i
            for p in st.encode(fr):
                out.mux(p)
        for p in st.encode():
            out.mux(p)
    return buf.getvalue()


def generated_clips(work: Path, width: int, height: int, count: int, seconds: float = 5.0, fps: float = 24.0,
                    preset: str = "medium") -> list[Path]:
    """`count` clips (different seeds), cached under work/clips."""
    d = work / "clips"
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for seed in range(count):
        p = d / f"gen-{width}x{height}-{fps:g}fps-{seconds:g}s-crf23-{preset}-s{seed}.mp4"
        if not p.exists():
            t = time.time()
            data = encode_clip(width, height, fps, seconds, seed=seed, preset=preset)
            tmp = p.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.rename(p)
            print(f"[bench] generated {p.name} ({len(data) // 1024} KiB, {len(data) * 8 / seconds / 1e6:.2f} Mbps) in {time.time() - t:.1f}s", flush=True)
        out.append(p)
    return out


def tiny_clips(work: Path, count: int = 4) -> list[Path]:
    """Small cheap clips for the memory runs: 160x120, 8 fps, 2 s (16 frames -> 4 kept)."""
    return generated_clips(work, 160, 120, count, seconds=2.0, fps=8.0, preset="veryfast")


def clip_info(p: Path) -> dict[str, Any]:
    import av

    with av.open(str(p)) as c:
        s = c.streams.video[0]
        return {"name": p.name, "w": s.codec_context.width, "h": s.codec_context.height,
                "fps": round(float(s.average_rate or 0), 2), "frames": s.frames, "kib": p.stat().st_size // 1024}
