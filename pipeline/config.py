"""Typed run configuration. Every field is documented here; `configs/*.yaml` only sets values.

Load with `load_config(path, overrides)`; overrides are `dotted.key=value` strings whose values are
parsed as YAML scalars (`engine.kind=vllm`, `decode.actors=4`, `output.partition_cols=[run_id]`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import ConfigError
from pipeline.schema import PREFILTER_COLUMNS

# qwen-vl-utils 0.0.14 constants (vision_process.py); the official inference leaves them all at default.
QWEN_FACTOR = 28
QWEN_FPS = 2.0
QWEN_FPS_MIN_FRAMES = 4
QWEN_FPS_MAX_FRAMES = 768
QWEN_VIDEO_MIN_PIXELS = 128 * 28 * 28  # 100,352
QWEN_VIDEO_MAX_PIXELS = 768 * 28 * 28  # 602,112
QWEN_VIDEO_TOTAL_PIXELS = int(128000 * 28 * 28 * 0.9)  # ~90.3M; MODEL_SEQ_LEN-derived default


# Container extensions read as a sample's video (WebDataset member, packed file, manifest URL): every container
# FFmpeg demuxes that holds video. `vscore pack` packs exactly these, the read stage reads exactly these (and
# sniffs members with other extensions, see pipeline/video/sniff.py).
VIDEO_EXTENSIONS = ("mp4", "webm", "mkv", "mov", "avi", "gif", "m4v", "mpg", "mpeg", "mpe", "m1v", "m2v", "vob", "ts",
                    "m2ts", "mts", "m2t", "flv", "f4v", "3gp", "3g2", "wmv", "asf", "ogv", "ogm", "mxf", "dv", "nut",
                    "y4m", "rm", "rmvb", "qt", "divx", "h264", "264", "hevc", "h265", "265", "ivf", "mjpeg")

# Output columns a run may be partitioned by (see OutputConfig.partition_cols).
PARTITION_COLUMNS = ("run_id", "shard_group", "status", "error_stage", "parse_mode", "template", "model")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StorageOptions(_Model):
    """How to reach object storage through fsspec (s3fs for s3://). Credentials come from the usual
    AWS chain (env vars, profile, instance role); they are never stored in outputs or logs."""

    endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, moto, R2...); None = AWS or AWS_ENDPOINT_URL.")
    profile: str | None = Field(None, description="AWS profile name from ~/.aws/credentials.")
    anon: bool = Field(False, description="Anonymous (unsigned) access for public buckets.")
    region: str | None = Field(None, description="Bucket region, when not discoverable.")
    retries: int = Field(20, ge=1, description=(
        "Attempts per S3 request, in each of two layers: botocore ('standard' mode: 5xx, throttling, connection errors; "
        "backoff rand(0, min(2^n, 20)) s) and, once botocore gives up, s3fs's loop (SlowDown, 5xx, resets; waits "
        "min(0.1 x 1.7^n, 15) s). botocore stops retrying when its per-client retry quota is spent (500 tokens, 5 per "
        "throttled retry: within seconds of a storm in a busy process), so s3fs's loop is what rides a storm out: N "
        "attempts span about 29 + 15 x (N - 10) s, 20 ~ 3 min. The default survives a minute of 80% SlowDown "
        "(tests/test_storage_faults.py; with 10, ~1% of requests in a busy process gave up after ~30 s and became "
        "read-error rows or failed writes). Raise it for longer storms; every retry is counted in the summary."))
    timeout_s: float = Field(60.0, gt=0, description="Connect and read timeout per S3 request.")

    def fsspec_kwargs(self, protocol: str) -> dict[str, Any]:
        if protocol not in ("s3", "s3a"):
            return {}
        kw: dict[str, Any] = {"anon": self.anon,
                              "config_kwargs": {"retries": {"total_max_attempts": self.retries, "mode": "standard"},
                                                "connect_timeout": self.timeout_s, "read_timeout": self.timeout_s}}
        if self.endpoint_url:
            kw["endpoint_url"] = self.endpoint_url
        if self.profile:
            kw["profile"] = self.profile
        if self.region:
            kw["client_kwargs"] = {"region_name": self.region}
        return kw


class ColumnsConfig(_Model):
    """Which manifest column (or shard-sample JSON field) plays which role. Dotted names reach into nested
    fields (``meta.caption``); a column whose name itself holds dots is found first."""

    video: str = Field("video", description="Manifest column holding the video: an fsspec URL (s3://, gs://, https://, a local path) or a "
                       "path relative to the manifest's folder. Required in every manifest row.")
    prompt: str | None = Field(None, description="Manifest column holding the prompt (the caption); None = the first of "
                               "input.prompt_fields the row has. A list (or a string of a Python/JSON list) pairs with `spans`.")
    key: str | None = Field(None, description="Manifest column holding a sample key (informational, kept in `key`); None = the video URL.")
    start_s: str | None = Field(None, description="Column / shard JSON field with the clip start in the video (seconds as a number, or "
                                "H:MM:SS.mmm). None = 'start_s' in shard JSON; no span in manifests.")
    end_s: str | None = Field(None, description="Column / shard JSON field with the clip end (as start_s). None = 'end_s' in shard JSON.")
    spans: str | None = Field(None, description="Column / shard JSON field with a list of [start, end] pairs (Panda-70M: the string "
                              "\"[['0:00:00.000', '0:00:05.005'], ...]\"): one sample per span, the prompt column then holds a "
                              "parallel list of captions; the source is fetched once per row.")


class InputConfig(_Model):
    shards: str | None = Field(None, description="WebDataset shard URL(s): fsspec URL with globs (*, ?) and brace ranges "
                               "({000000..000099}, {a,b}); a comma-free list may also be given as several URLs separated by spaces. "
                               "Exactly one of shards and manifest.")
    manifest: str | None = Field(None, description="Instead of shards: a Parquet, CSV or JSONL table (or a glob / brace list of them, any "
                                 "fsspec URL) with one video URL per row (input.columns). Read in blocks of rows, never whole.")
    manifest_format: Literal["auto", "parquet", "csv", "jsonl"] = Field("auto", description="Manifest file format; auto = by extension "
                                                                        "(.parquet/.pq, .csv, .jsonl/.ndjson/.json).")
    columns: ColumnsConfig = Field(default_factory=ColumnsConfig)
    prompt_fields: list[str] = Field(default_factory=lambda: ["prompt", "caption", "text"], min_length=1, description=(
        "Shard samples (and manifests without columns.prompt): JSON fields tried in order for the prompt, dotted paths allowed "
        "(meta.caption); the first non-empty string wins, then the .txt member. None found = a read error row naming them."))
    manifest_block_rows: int = Field(2000, ge=1, description="Parquet manifests: rows per block (one read task, one resume unit; "
                                     "blocks never span row groups). Names the blocks (`shard` column), so it is row-affecting.")
    manifest_block_bytes: int = Field(1 << 20, ge=1024, description="CSV/JSONL manifests: bytes per block, cut at record boundaries. "
                                      "Names the blocks (`shard` column), so it is row-affecting.")
    fetch_concurrency: int = Field(8, ge=1, description="Manifest videos fetched concurrently per read task (each up to max_sample_bytes).")
    storage: StorageOptions = Field(default_factory=StorageOptions)
    samples_per_block: int = Field(8, ge=1, description="Samples per Ray Data block emitted by the shard reader.")
    max_sample_bytes: int = Field(1 << 30, ge=1, description="Bytes one sample (all its tar members together, or one manifest video) may hold; "
                                  "a sample past it is an error row (read stage) and the members past the limit are never loaded.")
    video_extensions: list[str] = Field(default_factory=lambda: list(VIDEO_EXTENSIONS),
                                        description="Member extensions treated as the sample's video (first match wins). A sample with none "
                                                    "of them takes a member of another extension whose bytes FFmpeg opens as video.")
    limit: int | None = Field(None, ge=1, description="Score at most this many samples (debugging).")
    read_num_cpus: float = Field(0.25, gt=0, description="CPUs reserved per shard-read task (I/O bound; keep small so reads are never starved by actors).")

    @model_validator(mode="after")
    def _one_source(self) -> "InputConfig":
        if (self.shards is None) == (self.manifest is None):
            raise ValueError("set exactly one of input.shards and input.manifest")
        return self


class DecodeConfig(_Model):
    """Frame sampling and resizing, defaulting to exactly what qwen-vl-utils 0.0.14 does for
    `{"video": path, "fps": 2.0}` (the official VideoScore2 message)."""

    fps: float = Field(QWEN_FPS, gt=0, description="Sampling rate of frames fed to the model (official: 2.0).")
    min_frames: int = Field(QWEN_FPS_MIN_FRAMES, ge=2, description="qwen-vl-utils FPS_MIN_FRAMES.")
    max_frames: int = Field(QWEN_FPS_MAX_FRAMES, ge=2, description="qwen-vl-utils FPS_MAX_FRAMES.")
    min_pixels: int = Field(QWEN_VIDEO_MIN_PIXELS, ge=28 * 28, description="Per-frame lower pixel bound (VIDEO_MIN_PIXELS).")
    max_pixels: int = Field(QWEN_VIDEO_MAX_PIXELS, ge=28 * 28, description="Per-frame upper pixel bound (VIDEO_MAX_PIXELS).")
    total_pixels: int = Field(QWEN_VIDEO_TOTAL_PIXELS, ge=28 * 28, description="Budget over all frames (VIDEO_TOTAL_PIXELS); binds only for long clips.")
    threads: int = Field(1, ge=0, description="PyAV decoder threads per video (0 = FFmpeg auto).")
    skip_nonref: bool = Field(True, description="Frame-exact reference-frame skipping (H.264, threads=1): non-reference frames that are "
                              "not kept are never decoded; the frames kept are byte-identical to the full decode (guarded; any doubt, "
                              "including a frame FFmpeg flags corrupt, falls back to it). ~1.2-1.4x decode throughput on B-frame streams; "
                              "byte-identical on a 278-clip real corpus plus 30 damaged/unusual files (docs/performance.md). "
                              "false = always the full decode.")
    patchify: bool | Literal["auto"] = Field("auto", description="Ship each video in the HF patch layout (uint8 patches: the same bytes "
                                             "as the frames, permuted; pipeline/vs2/processor.py) instead of frames, so the scoring actor hands "
                                             "them to vLLM without touching a pixel (docs/performance.md, 'Feeding the GPU'). auto = on when the "
                                             "engine takes them (engine.kind vllm, video_processor numpy, batches_in_flight > 1: the AsyncLLM "
                                             "pre-processed path); an engine that needs frames gets them back exactly (inverse permutation).")
    batch_size: int = Field(8, ge=1, description="Videos per decode batch (map_batches batch_size): one output block of frames "
                            "(~12 MB per 5 s clip at the reference size). Fewer, larger blocks cost Ray less per video (docs/performance.md).")
    num_cpus: float = Field(1.0, gt=0, description="CPUs reserved per decode actor.")
    memory: int | None = Field(5 * 2**29, ge=1, description="Bytes of Ray's `memory` resource reserved per decode actor (default 2.5 GiB; a "
                               "scheduling reservation: a node hosts only as many decode actors as its memory resource holds; Ray does not "
                               "cap the process). A decode actor's peak RSS is ~0.6 GiB + 2 x batch_size x one clip's kept frames (frames x "
                               "height x width x 3 bytes; the batch is copied once into the output block): measured 704 MiB at batch_size 1 "
                               "and 905 MiB at 2 for 30 s 1080p clips (60 frames at 1008x560 = 97 MiB each; docs/cluster.md). The default "
                               "covers batch_size 8 of clips up to ~120 MiB of frames; longer clips (up to total_pixels: ~258 MiB of "
                               "frames) need a smaller batch_size or more memory. None = no reservation.")
    actors: int | Literal["auto"] = Field(1, description="Decode actors (max of the autoscaling range); 'auto' = actors_per_engine x scoring actors, capped by the cluster's CPUs.")
    min_actors: int | None = Field(None, ge=1, description="Lower bound of the decode actor pool (default 1: the pool shrinks to what survives a lost node).")
    actors_per_engine: float = Field(4.0, gt=0, description="Decode actors per scoring actor when actors='auto' "
                                     "(sizing rule from the benchmark: decode videos/s per core vs engine videos/s).")
    max_decoded_pixels: int = Field(8192 * 8192, ge=1, description="Frame size limit (width*height, 67.1M = 8192x8192: ~100 MB per yuv420 frame). "
                                    "Enforced before any frame buffer is allocated: passed to FFmpeg as the decoders' max_pixels (also while probing "
                                    "the container), checked on the stream's size before decoding and on the first decoded frame; larger is an error row.")
    max_duration_s: float = Field(3600.0, gt=0, description="A clip longer than this (container metadata, or frames/fps) is an error row, checked before decoding.")
    max_bytes: int | None = Field(None, ge=1, description="Encoded size limit per video in the decoder (direct callers of decode_video); None = no extra "
                                  "check here: in a run the read stage already turns members above input.max_sample_bytes into error rows unread.")
    decode_timeout_s: float = Field(600.0, gt=0, description="Wall-clock budget per video (probe + decode + resize); checked between packets/frames, so "
                                    "a single FFmpeg call that never returns is not interrupted (the Ray worker/task is the backstop). "
                                    "600 s covers a 1 h 1080p clip decoded on one thread.")
    apply_rotation: bool = Field(False, description="Player geometry: turn/mirror frames by the stream's display matrix (multiples of 90 degrees, "
                                 "flips included) and scale non-square pixels (SAR != 1) to the display aspect before planning the resize, "
                                 "as ffmpeg/ffplay/mpv show the clip. Off by default = the reference geometry: qwen-vl-utils' decord and "
                                 "torchvision readers ignore both, so VideoScore2's official pipeline sees coded pixels in coded orientation; "
                                 "only clips that carry such metadata differ.")


class PromptConfig(_Model):
    template: Literal["vs2-eval", "vs2-public", "vs2-card", "vs2-train"] = Field(
        "vs2-eval", description="Prompt template by name (see pipeline/vs2/templates.py). vs2-eval is the benchmark prompt behind the paper's numbers.")


# Named prefilters (docs/signals.md explains each threshold). `corpus`: what a curation pipeline drops before
# an expensive judge: clips under 1 s, a shorter side under 240 px (VideoScore's scores degrade below ~240 px,
# VideoScore issue 5), still images (motion under 0.5 luma levels between frames 0.5 s apart: a still picture
# measures <= 0.1 after x264, the stillest real clip of ../shared/data/videos 2.1) and clips that are mostly
# blank frames.
PREFILTER_PRESETS: dict[str, str] = {
    "corpus": "duration_s >= 1 AND least(src_width, src_height) >= 240 AND motion >= 0.5 AND blank_fraction < 0.5",
}


class PrefilterConfig(_Model):
    """Which decoded clips reach the judge. A clip that fails the expression is never sent to the engine: its
    row has status "skipped", error_stage "prefilter" and the failed condition(s) as `error` (pipeline/stages/prefilter.py).
    Off by default, so that benchmark scoring stays complete."""

    preset: Literal["none", "corpus"] = Field("none", description="A named expression (PREFILTER_PRESETS in pipeline/config.py, "
                                              "docs/signals.md): 'corpus' = " + PREFILTER_PRESETS["corpus"] + ". 'none' = no preset.")
    where: str | None = Field(None, description="SQL expression a clip must satisfy, over the probe's and the signals' columns ("
                              + ", ".join(PREFILTER_COLUMNS) + "), checked with the allow-list of `vscore filter --where` (pipeline/expr.py); "
                              "AND-ed with the preset's. A condition that is NULL counts as failed (SQL WHERE semantics).")

    @field_validator("where")
    @classmethod
    def _check_where(cls, v: str | None) -> str | None:
        from pipeline.expr import ExpressionError

        if v is not None:
            try:
                compile_prefilter(v)
            except ExpressionError as e:
                raise ValueError(str(e)) from None
        return v

    def expression(self) -> str | None:
        """The whole expression (preset AND where), or None when no prefilter is configured."""
        parts = ([PREFILTER_PRESETS[self.preset]] if self.preset != "none" else []) + ([f"({self.where})"] if self.where else [])
        return " AND ".join(parts) or None


def compile_prefilter(expr: str) -> tuple[str, list[str], list[str]]:
    """`pipeline.expr.compile_where` over the prefilter's columns: (SQL, top-level conditions, columns used).
    Raises ExpressionError (a UsageError); inside a config it becomes a validation error of prefilter.where."""
    from pipeline.expr import compile_where

    return compile_where(expr, PREFILTER_COLUMNS, what="prefilter.where", source="the prefilter (probe and signal columns)")


class SamplingConfig(_Model):
    temperature: float = Field(0.7, ge=0, description="Official: 0.7. Ignored when greedy.")
    greedy: bool = Field(False, description="Greedy decoding (deterministic across seeds; not the official setting).")
    top_p: float | None = Field(None, gt=0, le=1, description="None = the checkpoint's generation_config.json, else 1.0.")
    top_k: int | None = Field(None, description="None = the checkpoint's generation_config.json, else transformers' default 50; -1/0 = off.")
    repetition_penalty: float | None = Field(None, gt=0, description="None = the checkpoint's generation_config.json, else 1.0.")
    max_new_tokens: int = Field(1024, ge=1, description="Official public script: 1024.")
    seed: int = Field(0, description="Base seed; each video's seed is derived from (seed, row_id).")
    num_samples: int = Field(1, ge=1, description="Score each video this many times (different seeds) and store the mean and "
                             "spread per dimension (*_mean, *_std): the fix for run-to-run variance at temperature 0.7 "
                             "(VideoScore2 issue #5). The hard scores, rationale and raw output are those of sample 0.")
    logprobs: int = Field(20, ge=5, description="Top-k logprobs per generated token requested from vLLM for the soft scores.")


class EngineConfig(_Model):
    kind: str = Field("vllm", pattern=r"^(vllm|transformers|[A-Za-z_][\w.]*:[A-Za-z_]\w*)$",
                      description="vllm (production), transformers (reference path, CPU or GPU), or 'module:Class' "
                                  "for a custom engine implementing pipeline.engines.base.Engine.")
    model: str = Field("TIGER-Lab/VideoScore2", description="Hub id or local path of the checkpoint.")
    revision: str | None = Field(None, description="Hub revision (commit) to pin.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field("bfloat16", description="Weights/activations dtype. The reference ran fp32; bf16 is the usual deviation.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="transformers engine device (auto = cuda if available).")
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM tensor parallel size; GPUs per scoring actor.")
    max_model_len: int = Field(16384, ge=256, description="vLLM context length (prompt + video tokens + output).")
    max_num_seqs: int = Field(32, ge=1, description="vLLM max concurrent sequences.")
    max_num_batched_tokens: int | None = Field(None, description="vLLM token budget per step; must exceed the largest video's tokens.")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    enforce_eager: bool = Field(False, description="vLLM: skip CUDA graphs / torch.compile (faster start, slower steps).")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra keyword arguments for vllm.LLM / from_pretrained.")
    video_processor: Literal["numpy", "hf"] = Field("numpy", description=(
        "vLLM engine (AsyncLLM path): who turns the frames into the model's video tensors. numpy = our numpy patchify "
        "(pipeline/vs2/processor.py) in the scoring actor, handed to vLLM pre-processed (pipeline/engines/vllm_video.py): "
        "the HF video processor never runs (Qwen2.5-VL checkpoints); hf = vLLM runs transformers' video processor in "
        "its front-end (also the sync vllm.LLM path). Both hand the model byte-identical tensors and prompt token ids "
        "(tests/test_vllm_video.py), so it is not row-affecting; numpy's video step costs the actor 10-27 ms per video "
        "instead of 26-123 (docs/performance.md, 'The video pass-through')."))
    batch_size: int = Field(16, ge=1, description="Videos per scoring batch (map_batches batch_size).")
    batches_in_flight: int = Field(2, ge=1, description="Batches a scoring actor accepts concurrently, so the engine never drains.")
    actors: int | Literal["auto"] = Field(1, description="Scoring actors (engine replicas); 'auto' = the cluster's GPUs / GPUs per actor.")
    num_gpus: float = Field(1.0, ge=0, description="GPUs per scoring actor (set tensor_parallel_size for TP; 0 on CPU).")
    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved per scoring actor.")
    max_restarts: int = Field(6, ge=0, description="Times Ray restarts a dead scoring actor (engine crash, OOM, preemption). "
                              "A poison sample costs up to 3 (its batch dies once, then it dies twice alone and is quarantined).")
    max_task_retries: int = Field(3, ge=0, description="Times a batch is retried on a restarted scoring actor before the job fails "
                                  "(>= 3 lets a batch holding a poison sample reach its quarantine).")
    resources: dict[str, float] = Field(default_factory=dict, description="Custom Ray resources per scoring actor, e.g. {scorer: 1} to place "
                                        "scoring actors only on nodes started with `ray start --resources='{\"scorer\": N}'` (the GPU role).")


class OutputConfig(_Model):
    path: str = Field(..., description="Output dataset root (fsspec URL: local path or s3://...).")
    storage: StorageOptions = Field(default_factory=StorageOptions)
    partition_cols: list[str] = Field(default_factory=lambda: ["run_id", "shard_group"], description=(
        "Hive partition columns, from " + ", ".join(PARTITION_COLUMNS) + ": low-cardinality columns whose values come from "
        "the config or the pipeline, never from sample data (keys, prompts and shard URLs are unbounded). Values are "
        "percent-encoded in the path, so a value is never a path."))

    @field_validator("partition_cols")
    @classmethod
    def _safe_partitions(cls, v: list[str]) -> list[str]:
        bad = [c for c in v if c not in PARTITION_COLUMNS]
        if bad or len(set(v)) != len(v):
            raise ValueError(f"partition_cols {v}: each once, from {list(PARTITION_COLUMNS)}")
        return v
    shards_per_group: int = Field(64, ge=1, description="Shards per `shard_group` partition value.")
    run_id: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", description="(letters, digits, '.', '_', '-'; it names "
                               "folders and marker files) "
                               "Run id partition value; None = derived from every setting that can change a row (`ScoreConfig.scoring_fingerprint`: engine, model, prompt, sampling, frame rule, limits).")
    quarantine_path: str | None = Field(None, description="Where error rows are also written (same schema); None = '<path>-quarantine'.")
    min_rows_per_file: int = Field(64, ge=1, description="Rows buffered per write task (one commit unit, one file per partition).")
    target_file_mb: float = Field(128.0, gt=0, description="Compaction target: small committed files of a partition are "
                                  "rewritten, atomically, into files of about this size (pipeline/run/compact.py).")
    compact: bool = Field(True, description="Compact small files while the run goes on (with each state fold) and at its end.")
    state_fold_every_s: float = Field(60.0, gt=0, description="How often the driver folds new commit markers and shard manifests into "
                                      "the run's compact checkpoint while a run goes on (also done at start and end).")


class CacheConfig(_Model):
    """Never score the same clip twice (pipeline/stages/score_cache.py). Scores are keyed by the clip's
    `content_hash` (video bytes + span), its prompt and the score fingerprint (every engine, prompt, sampling
    and decode setting that changes the model input)."""

    url: str | None = Field(None, description="Cross-run score cache (any fsspec URL); None = only the run's own store under the output.")
    storage: StorageOptions = Field(default_factory=StorageOptions)
    dedup: bool = Field(True, description="Copy the scores of a clip already scored (or in flight) in this run instead of scoring it again.")


class RayConfig(_Model):
    address: str | None = Field(None, description="Ray address; None = RAY_ADDRESS or a new local Ray.")
    num_cpus: int | None = Field(None, description="CPUs of a new local Ray (None = all).")
    object_store_memory: int | None = Field(None, description="Object store bytes of a new local Ray.")
    progress_bars: bool = Field(True, description="Ray Data progress bars.")
    actor_locality: bool | None = Field(None, description="Ray Data actor locality (route blocks to actors on the node that holds them). "
                                        "None = off on the one-node local Ray that vscore starts (nothing to choose between; it costs a lookup actor), Ray's default (on) when connecting to a cluster.")
    env_vars: dict[str, str] = Field(default_factory=dict, description="Extra env vars for Ray workers (no secrets here: they land in logs).")
    capacity_timeout_s: float | None = Field(120.0, gt=0, description="Static clusters: a plan no node can host (no node offers a scoring or "
                                             "decode actor's CPUs/GPUs/custom resources) fails at start with one line naming what is missing, and "
                                             "a run whose cluster has had no such node for this many seconds (the node was lost) stops with one "
                                             "line; a rerun resumes. None = wait for capacity forever (autoscaling clusters whose groups start at 0).")
    no_progress_timeout_s: float | None = Field(1800.0, gt=0, description=(
        "Stop the run with one line when no stage has taken or produced a block for this many seconds (Ray Data's "
        "execution_no_progress_timeout_s; its default). Catches what capacity_timeout_s cannot: a lost node whose actors "
        "Ray restarts on survivors that offer every resource kind but not the room for them, which leaves their "
        "batches waiting forever (measured: docs/cluster.md). Keep it above the slowest batch (a scoring batch of long "
        "clips); None = never."))


class ScoreConfig(_Model):
    input: InputConfig
    decode: DecodeConfig = Field(default_factory=DecodeConfig)
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    prefilter: PrefilterConfig = Field(default_factory=PrefilterConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    output: OutputConfig
    cache: CacheConfig = Field(default_factory=CacheConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    def scoring_fingerprint(self) -> str:
        """Hash of every setting that can change an output row's content: every field of the config except
        those listed in `NOT_ROW_AFFECTING` (throughput, placement, location and retry knobs). A new field
        is row-affecting until it is listed there (tests/test_config.py enumerates every field)."""
        keep = {k: v for k, v in _flatten(self.model_dump(mode="json")).items() if not _not_row_affecting(k)}
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:12]

    def score_fingerprint(self) -> str:
        """The row-affecting settings that change what the model sees or how it samples (engine, prompt,
        sampling, decode): the score cache's key next to the clip's content hash and prompt."""
        keep = {k: v for k, v in _flatten(self.model_dump(mode="json")).items()
                if not _not_row_affecting(k) and k.split(".", 1)[0] in ("engine", "prompt", "sampling", "decode")}
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:12]

    def resolved_run_id(self) -> str:
        return self.output.run_id or f"vs2-{self.scoring_fingerprint()}"

    def decode_patchify(self) -> bool:
        """Whether the decode stage ships patches (`decode.patchify`; auto: when the engine takes them)."""
        if self.decode.patchify != "auto":
            return bool(self.decode.patchify)
        e = self.engine
        return e.kind == "vllm" and e.video_processor == "numpy" and e.batches_in_flight > 1


# Settings that cannot change what any output row holds, only how fast, where, or how often a failure is
# retried. Everything else (model, revision, dtype, device, tensor parallelism, engine kind and kwargs,
# max_model_len, the prompt, sampling, the frame rule, decode limits and timeout, read limits and video
# extensions, shard grouping, the prefilter) is in the scoring fingerprint, hence in the default run id. A dotted prefix
# covers a whole section. Batching knobs are listed: vLLM is not batch-invariant, but neither are two runs of
# the same config, so they are treated as throughput. `decode.skip_nonref` is listed because its frames are
# byte-identical to the full decode (tests/test_skip_nonref.py); `engine.video_processor` and `decode.patchify` because
# every choice hands the model byte-identical tensors and prompt ids (tests/test_vllm_video.py).
NOT_ROW_AFFECTING = frozenset({
    "input.shards", "input.manifest", "input.storage", "input.samples_per_block", "input.limit", "input.read_num_cpus",
    "input.fetch_concurrency",
    "decode.threads", "decode.skip_nonref", "decode.patchify", "decode.batch_size", "decode.num_cpus", "decode.actors",
    "decode.min_actors", "decode.actors_per_engine", "decode.memory",
    "engine.max_num_seqs", "engine.max_num_batched_tokens", "engine.gpu_memory_utilization", "engine.enforce_eager",
    "engine.batch_size", "engine.batches_in_flight", "engine.actors", "engine.num_gpus", "engine.num_cpus",
    "engine.max_restarts", "engine.max_task_retries", "engine.resources", "engine.video_processor",
    "output.path", "output.storage", "output.run_id", "output.quarantine_path", "output.min_rows_per_file",
    "output.partition_cols", "output.state_fold_every_s", "output.target_file_mb", "output.compact",
    "ray", "cache",
})


def _not_row_affecting(dotted: str) -> bool:
    return any(dotted == k or dotted.startswith(k + ".") for k in NOT_ROW_AFFECTING)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; dict-valued leaf fields (engine_kwargs, env_vars) stay whole."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key not in ("engine.engine_kwargs", "engine.resources", "ray.env_vars"):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {p!r} is not a section")
    node[parts[-1]] = value


def _is_model(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, BaseModel)


def _key_of(loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], type[BaseModel] | None]:
    """The config key an error location names (pydantic adds union-member tags such as ``int`` or
    ``literal['auto']`` after a leaf field: dropped; list indices kept) and the model holding its last name."""
    model: Any = ScoreConfig
    holder = None
    keep: list[Any] = []
    for part in loc:
        if model is None:  # past a leaf field
            if isinstance(part, int):
                keep.append(part)
            continue
        keep.append(part)
        holder = model
        f = model.model_fields.get(part) if isinstance(part, str) else None
        model = f.annotation if f is not None and _is_model(f.annotation) else None
    return tuple(keep), holder


def validation_message(e: ValidationError) -> str:
    """A pydantic ValidationError of ScoreConfig as one line, one clause per key: unknown keys (with the
    closest known key), missing keys, wrong values (with the value given)."""
    import difflib

    clauses: dict[str, list[str]] = {}
    for err in e.errors():
        loc, holder = _key_of(tuple(err["loc"]))
        key = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(loc[-1]), list(holder.model_fields) if holder else [], n=1)
            hint = f" (did you mean {'.'.join(str(p) for p in loc[:-1] + (close[0],))}?)" if close else ""
            clauses.setdefault(key, []).append(f"unknown key{hint}")
        elif err["type"] == "missing":
            clauses.setdefault(key, []).append("missing (required)")
        else:
            given = repr(err.get("input"))
            given = given if len(given) <= 60 else given[:57] + "..."
            clauses.setdefault(key, []).append(f"{err['msg']} (got {given})")
    return "; ".join(f"{k}: {' or '.join(dict.fromkeys(v))}" for k, v in clauses.items())


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), base: dict[str, Any] | None = None) -> ScoreConfig:
    """Read a YAML config (or start from `base`) and apply `dotted.key=value` overrides. A missing or
    unreadable file, invalid YAML, a bad override or an invalid config raise ConfigError, one line."""
    tree: dict[str, Any] = dict(base or {})
    where = "config"
    if path is not None:
        where = f"config {path}"
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"no config file at {path}: the path does not exist")
        if p.is_dir():
            raise ConfigError(f"{path} is a folder; expected a YAML config file (see configs/)")
        try:
            tree = yaml.safe_load(p.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            mark = getattr(e, "problem_mark", None)
            at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
            raise ConfigError(f"{where} is not valid YAML: {at}{getattr(e, 'problem', None) or e}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{where}: expected a mapping of sections (input, engine, output, ...), "
                              f"found a {type(tree).__name__}")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not dotted.key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not a YAML scalar ({' '.join(str(e).split())})") from None
        _set_dotted(tree, key.strip(), value)
    try:
        return ScoreConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(f"{where}: {validation_message(e)}") from None
