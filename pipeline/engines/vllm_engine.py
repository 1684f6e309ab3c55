"""The vLLM engine: the production path. A thin adapter from `EngineRequest`s to vLLM prompts.

Each request becomes `{"prompt": <chat text>, "multi_modal_data": {"video": (frames, metadata)},
"mm_processor_kwargs": {...}}`. The frames are already sampled and resized, so the processor is told
not to resample (`do_sample_frames=False`) or resize (`do_resize=False`), and the metadata presents
them as a clip sampled at exactly 2 fps so that second_per_grid_ts = 1.0 as in the official script
(see `pipeline.vs2.chat.nominal_video_metadata`). With `engine.video_processor=numpy` (the default; AsyncLLM path)
the request is instead rendered here, with the video tensors pre-computed by numpy and vLLM's own processor doing
the rest (`pipeline.engines.vllm_video`): the HF video processor never runs, the model input is byte-identical.
On that path the engine also takes the video already patchified by the decode stage (`decode.patchify`,
`EngineRequest.patches`), so the scoring actor only wraps the bytes it receives.

Soft-score inputs: every request asks for the log-probabilities of the five digit tokens at every
generated position (`SamplingParams.logprob_token_ids`, vLLM >= 0.3x; older versions fall back to the
top-`logprobs` list, where a digit outside it is -inf). By default the engine runs with
`logprobs_mode="processed_logprobs"`, i.e. after penalties, temperature, top-k and top-p, exactly
what transformers' `output_scores` gives the official soft score. With `logprobs_mode="raw_logprobs"`
(vLLM's default; set it in engine_kwargs) the raw values are divided by the temperature, which equals
the temperature-scaled distribution up to a per-row constant but ignores top-k/top-p masking and
repetition penalty.

Two ways to run it. With `use_async=True` (the default when `engine_cfg.batches_in_flight > 1`) an
`AsyncLLM` is driven from a private event-loop thread: `agenerate()` (awaitable from any event loop)
and `generate()` (blocking, thread-safe) submit every request of a batch at once, and batches coming
from several threads or coroutines share the running engine batch, so it never drains between them.
With `use_async=False` a synchronous `vllm.LLM` runs one batch per `generate()` call (serialised by a
lock).

vllm is an optional dependency: it is imported only when an engine is built.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.vs2.chat import (
    NOMINAL_FPS,
    VIDEO_PROCESSOR_KWARGS,
    digit_token_ids,
    nominal_video_metadata,
    render_chat,
    video_token_count,
)
from pipeline.engines.base import EngineOutput, EngineRequest
from pipeline.schema import one_line
from pipeline.engines.sampling import resolve_sampling

if TYPE_CHECKING:
    from pipeline.config import EngineConfig, SamplingConfig

log = logging.getLogger(__name__)

VIDEO_PAD = "<|video_pad|>"


def engine_args(engine_cfg: "EngineConfig", video_fps: float = NOMINAL_FPS, max_logprobs: int = 20) -> dict[str, Any]:
    """Keyword arguments for `vllm.LLM` / `AsyncEngineArgs` built from the engine config."""
    args: dict[str, Any] = {
        "model": engine_cfg.model,
        "revision": engine_cfg.revision,
        "tokenizer_revision": engine_cfg.revision,
        "dtype": engine_cfg.dtype,
        "tensor_parallel_size": engine_cfg.tensor_parallel_size,
        "max_model_len": engine_cfg.max_model_len,
        "max_num_seqs": engine_cfg.max_num_seqs,
        "gpu_memory_utilization": engine_cfg.gpu_memory_utilization,
        "enforce_eager": engine_cfg.enforce_eager,
        "limit_mm_per_prompt": {"image": 0, "video": 1},
        # Engine-wide defaults (also used by vLLM's start-up profiling run); repeated per request.
        "mm_processor_kwargs": {**VIDEO_PROCESSOR_KWARGS, "fps": video_fps},
        "logprobs_mode": "processed_logprobs",
        "max_logprobs": max(20, max_logprobs),
        "disable_log_stats": True,  # vscore counts its own progress; vLLM's per-step stats cost the front-end CPU
        # Batch scoring sees every video once: the multimodal processor cache can only cost (a copy of
        # every processed video, LRU bookkeeping). engine_kwargs may set it back (docs/performance.md).
        "mm_processor_cache_gb": 0,
    }
    if engine_cfg.max_num_batched_tokens is not None:
        args["max_num_batched_tokens"] = engine_cfg.max_num_batched_tokens
    if engine_cfg.kind == "vllm":  # engine_kwargs belong to the engine the config names
        args.update(engine_cfg.engine_kwargs)
    return args


def video_uuid(req: EngineRequest) -> str:
    """The caller-supplied identity of a request's video (vLLM's `multi_modal_uuids`), used by vLLM instead of
    hashing the frames (prefix-cache and processor-cache key). The row id names the sample, and a run's
    frames for a sample are fixed by its config (one engine serves one run); the extra samples of
    `sampling.num_samples` (`<row_id>#j`) carry the same video, so they share its id. The shape guards
    against a caller reusing an id for other frames."""
    base = req.request_id.split("#", 1)[0]
    t, h, w = req.frame_shape
    return f"vscore:{base}:{t}x{h}x{w}"


class _LoopThread:
    """An asyncio event loop running forever in a daemon thread (home of the AsyncLLM)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="vllm-async-loop", daemon=True)
        self.thread.start()

    def submit(self, coro):  # -> concurrent.futures.Future
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        async def drain() -> None:  # let cancelled tasks (AsyncLLM's output handler) finish cancelling
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.submit(drain()).result(timeout=10)
        except Exception:  # pragma: no cover - best effort
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        if not self.thread.is_alive():
            self.loop.close()


class VLLMEngine:
    """`base.Engine` on vLLM: `AsyncLLM` when `use_async` (default: `engine_cfg.batches_in_flight > 1`),
    else the synchronous `vllm.LLM`."""

    name = "vllm"
    _video: Any = None  # VideoPassThrough when the video reaches vLLM pre-processed (set in __init__)

    def __init__(
        self,
        engine_cfg: "EngineConfig",
        sampling_cfg: "SamplingConfig",
        video_fps: float = NOMINAL_FPS,
        use_async: bool | None = None,
        mm_uuids: bool = True,
        detokenize: bool = False,
        flat_logprobs: bool = True,
        video_processor: str | None = None,
    ) -> None:
        from transformers import AutoProcessor

        if use_async is None:  # several batches in flight need the async engine
            use_async = engine_cfg.batches_in_flight > 1
        self.engine_cfg = engine_cfg
        self.video_fps = float(video_fps)
        self.use_async = bool(use_async)
        self.mm_uuids = bool(mm_uuids)  # name each video ourselves, so vLLM never hashes its frames
        # detokenize=False: vLLM neither detokenizes incrementally nor decodes every logprob's token; the text
        # is decoded once from the final ids, exactly as the transformers engine (and the official script) does.
        self.detokenize = bool(detokenize)
        self.flat_logprobs = bool(flat_logprobs)  # one flat container per request instead of a dict per position
        # numpy: the video reaches vLLM pre-processed (pipeline/engines/vllm_video.py), the HF processor never runs
        self.video_processor = video_processor or engine_cfg.video_processor
        if self.video_processor not in ("numpy", "hf"):
            raise ValueError(f"video_processor must be numpy or hf, got {self.video_processor!r}")
        self._lock = threading.Lock()  # the sync LLM is not thread-safe
        self.sampling = resolve_sampling(engine_cfg.model, sampling_cfg, revision=engine_cfg.revision)
        # The checkpoint's own processor: chat template and a transformers tokenizer (Engine.tokenizer).
        self.processor = AutoProcessor.from_pretrained(engine_cfg.model, revision=engine_cfg.revision)
        self.tokenizer = self.processor.tokenizer
        self.digit_ids = digit_token_ids(self.tokenizer)
        self.max_model_len = engine_cfg.max_model_len
        self.args = engine_args(engine_cfg, self.video_fps, self.sampling["logprobs"])
        self.logprobs_mode = str(self.args.get("logprobs_mode", "raw_logprobs"))
        self.mm_processor_kwargs = {**VIDEO_PROCESSOR_KWARGS, "fps": self.video_fps}

        t0 = time.perf_counter()
        self.llm: Any = None
        self.async_llm: Any = None
        self._loop: _LoopThread | None = None
        if use_async:
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM

            self._loop = _LoopThread()
            # Built in the caller's thread (vLLM starts its engine-core process here); AsyncLLM starts
            # its output handler lazily on the first request, i.e. on the private loop.
            self.async_llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**self.args))
        else:
            import vllm

            self.llm = vllm.LLM(**self.args)
        self.load_seconds = time.perf_counter() - t0
        self._video = None  # AsyncLLM path only: the sync vllm.LLM renders raw prompts itself (HF processor)
        if use_async and self.video_processor == "numpy":
            from pipeline.engines.vllm_video import VideoPassThrough
            from pipeline.vs2.processor import VideoProcessorSettings

            self._video = VideoPassThrough(self.async_llm.renderer,
                                           VideoProcessorSettings.from_processor(self.processor.video_processor),
                                           self.video_fps, self.mm_processor_kwargs)
        self._sp_fields = self._sampling_param_fields()
        log.info("vllm engine (%s): %s in %.1fs, sampling %s", "async" if use_async else "sync", engine_cfg.model,
                 self.load_seconds, {k: v for k, v in self.sampling.items() if k != "source"})

    # ---- prompts and parameters ---------------------------------------------------------------

    def render_prompt(self, user_text: str) -> str:
        return render_chat(self.processor, user_text)

    @property
    def takes_patches(self) -> bool:
        """Requests may carry the video as decode-made `Patches` (`decode.patchify`): handed to vLLM as they are, so
        the scoring actor does no per-pixel work. True on the pre-processed path (AsyncLLM, video_processor=numpy)."""
        return self._video is not None

    @staticmethod
    def _sampling_param_fields() -> set[str]:
        import inspect

        from vllm import SamplingParams

        return set(inspect.signature(SamplingParams).parameters)

    def sampling_params(self, seed: int) -> Any:
        from vllm import SamplingParams

        s = self.sampling
        kw: dict[str, Any] = {
            "n": 1,
            "temperature": s["temperature"],  # 0.0 = greedy
            "top_p": s["top_p"],
            "top_k": s["top_k"],  # 0 = off
            "repetition_penalty": s["repetition_penalty"],
            "max_tokens": s["max_new_tokens"],
            "seed": int(seed),
            "skip_special_tokens": True,
        }
        if "logprob_token_ids" in self._sp_fields:
            kw["logprob_token_ids"] = list(self.digit_ids)
        else:
            kw["logprobs"] = s["logprobs"]
        if not self.detokenize and "detokenize" in self._sp_fields:
            kw["detokenize"] = False
        if self.flat_logprobs and "flat_logprobs" in self._sp_fields:
            kw["flat_logprobs"] = True
        return SamplingParams(**kw)

    def vllm_prompt(self, req: EngineRequest) -> dict[str, Any]:
        """The request as vLLM takes it: a rendered `EngineInput` with the video pre-processed (numpy path), else a
        raw prompt with the frames, rendered by vLLM (the HF video processor runs in its front-end)."""
        if self._video is not None:
            video = req.patches if req.patches is not None else req.frames
            return self._video.engine_input(req.prompt, video, video_uuid(req) if self.mm_uuids else None)
        frames = req.frames if req.frames is not None else req.patches.frames()
        meta = nominal_video_metadata(frames, self.video_fps)
        meta["do_sample_frames"] = False
        prompt = {
            "prompt": req.prompt,
            "multi_modal_data": {"video": (frames, meta)},
            "mm_processor_kwargs": dict(self.mm_processor_kwargs),
        }
        if self.mm_uuids:
            prompt["multi_modal_uuids"] = {"video": [video_uuid(req)]}
        return prompt

    def expected_prompt_tokens(self, req: EngineRequest) -> int:
        """Prompt length after the video placeholder expands (validates the frames and the prompt)."""
        ids = self.tokenizer.encode(req.prompt, add_special_tokens=False)
        pad = self.tokenizer.convert_tokens_to_ids(VIDEO_PAD)
        n_pad = sum(1 for i in ids if i == pad)
        if n_pad != 1:
            raise ValueError(f"prompt must hold exactly one {VIDEO_PAD} placeholder, found {n_pad}")
        if req.patches is None:
            return len(ids) - 1 + video_token_count(req.frames)
        p = req.patches  # validated when made (pipeline.vs2.processor.Patches)
        return len(ids) - 1 + p.data.shape[0] // (p.merge_size * p.merge_size)

    def _validate(self, req: EngineRequest) -> None:
        n = self.expected_prompt_tokens(req)
        if n >= self.max_model_len:
            raise ValueError(f"prompt is {n} tokens (video included), max_model_len is {self.max_model_len}")

    # ---- outputs ----------------------------------------------------------------------------

    def _digit_rows(self, logprobs: Any, n_tokens: int) -> np.ndarray:
        rows = np.full((n_tokens, len(self.digit_ids)), -np.inf, dtype=np.float32)
        if not logprobs:
            return rows
        temperature = self.sampling["temperature"]
        divide = self.logprobs_mode.startswith("raw") and temperature > 0
        if hasattr(logprobs, "start_indices") and hasattr(logprobs, "token_ids"):  # vLLM's FlatLogprobs
            return self._digit_rows_flat(logprobs, rows, temperature if divide else 1.0)
        for pos, step in enumerate(list(logprobs)[:n_tokens]):
            if not step:
                continue
            for j, tid in enumerate(self.digit_ids):
                lp = step.get(tid)
                if lp is None:
                    continue
                v = float(lp.logprob)
                if math.isnan(v):
                    continue
                rows[pos, j] = v / temperature if divide else v
        return rows

    def _digit_rows_flat(self, flat: Any, rows: np.ndarray, scale: float) -> np.ndarray:
        """`_digit_rows` on a FlatLogprobs (entries of position i: start_indices[i]:end_indices[i]), vectorised.
        A token listed twice at a position (the sampled one is also a requested digit) has the same value."""
        n = min(len(flat.start_indices), rows.shape[0])
        if n == 0:
            return rows
        starts = np.asarray(flat.start_indices[:n], dtype=np.int64)
        ends = np.asarray(flat.end_indices[:n], dtype=np.int64)
        lo, hi = int(starts[0]), int(ends[-1])
        tids = np.asarray(flat.token_ids[lo:hi], dtype=np.int64)
        lps = np.asarray(flat.logprobs[lo:hi], dtype=np.float64)
        pos = np.repeat(np.arange(n), ends - starts)
        if pos.shape[0] != tids.shape[0]:  # not contiguous: fall back to the generic path
            for i in range(n):
                step = flat[i]
                for j, tid in enumerate(self.digit_ids):
                    lp = step.get(tid) if step else None
                    if lp is not None and not math.isnan(float(lp.logprob)):
                        rows[i, j] = float(lp.logprob) / scale
            return rows
        for j, tid in enumerate(self.digit_ids):
            m = (tids == tid) & ~np.isnan(lps)
            rows[pos[m], j] = lps[m] / scale
        return rows

    def _to_output(self, req: EngineRequest, out: Any) -> EngineOutput:
        comp = out.outputs[0]
        ids = [int(t) for t in comp.token_ids]
        text = comp.text if self.detokenize else self.tokenizer.decode(ids, skip_special_tokens=True)
        return EngineOutput(
            request_id=req.request_id,
            text=text,
            token_ids=ids,
            digit_logprobs=self._digit_rows(comp.logprobs, len(ids)),
            prompt_tokens=len(out.prompt_token_ids or []),
            output_tokens=len(ids),
        )

    @staticmethod
    def _is_engine_dead(e: BaseException) -> bool:
        return type(e).__name__ in ("EngineDeadError",)

    # ---- sync path ----------------------------------------------------------------------------

    def _llm_generate(self, reqs: list[EngineRequest]) -> list[Any]:
        prompts = [self.vllm_prompt(r) for r in reqs]
        params = [self.sampling_params(r.seed) for r in reqs]
        return self.llm.generate(prompts, params, use_tqdm=False)

    def generate(self, requests: list[EngineRequest]) -> list[EngineOutput]:
        if self.use_async:
            return self._loop.submit(self._agenerate(requests)).result()
        with self._lock:  # vllm.LLM (and the tokenizer used for validation) are not thread-safe
            return self._generate_sync(requests)

    def _generate_sync(self, requests: list[EngineRequest]) -> list[EngineOutput]:
        results: dict[int, EngineOutput] = {}
        ok: list[int] = []
        for i, req in enumerate(requests):
            try:
                self._validate(req)
                ok.append(i)
            except Exception as e:
                results[i] = EngineOutput(request_id=req.request_id, error=one_line(e))
        if ok:
            try:
                outs = self._llm_generate([requests[i] for i in ok])
                for i, out in zip(ok, outs):
                    results[i] = self._to_output(requests[i], out)
            except Exception as e:
                if self._is_engine_dead(e):
                    raise
                # vLLM rejects the whole call when one request fails validation or preprocessing (it
                # aborts the ones already added): resubmit one by one so only the bad one errors.
                log.warning("vLLM batch of %d failed (%s); retrying one by one", len(ok), one_line(e))
                for i in ok:
                    try:
                        results[i] = self._to_output(requests[i], self._llm_generate([requests[i]])[0])
                    except Exception as e1:
                        if self._is_engine_dead(e1):
                            raise
                        results[i] = EngineOutput(request_id=requests[i].request_id, error=one_line(e1))
        return [results[i] for i in range(len(requests))]

    # ---- async path ---------------------------------------------------------------------------

    async def agenerate(self, requests: list[EngineRequest]) -> list[EngineOutput]:
        """Submit every request at once and await them all. Awaitable from any event loop or thread;
        with the async engine concurrent calls share the running batch (with the sync engine they
        run one after another in a worker thread)."""
        if not self.use_async:
            return await asyncio.to_thread(self.generate, requests)
        return await asyncio.wrap_future(self._loop.submit(self._agenerate(requests)))

    async def _agenerate(self, requests: list[EngineRequest]) -> list[EngineOutput]:
        return list(await asyncio.gather(*(self._agenerate_one(r) for r in requests)))

    async def _agenerate_one(self, req: EngineRequest) -> EngineOutput:
        from vllm.sampling_params import RequestOutputKind

        try:
            self._validate(req)
            sp = self.sampling_params(req.seed)
            sp.output_kind = RequestOutputKind.FINAL_ONLY
            final = None
            rid = f"{req.request_id}-{uuid.uuid4().hex[:12]}"  # unique even if ids repeat across batches
            async for out in self.async_llm.generate(self.vllm_prompt(req), sp, rid):
                final = out
            if final is None:
                raise RuntimeError("vLLM returned no output")
            return self._to_output(req, final)
        except Exception as e:
            if self._is_engine_dead(e):
                raise
            cause = e.__cause__ if type(e).__name__ == "EngineGenerateError" and e.__cause__ else e
            return EngineOutput(request_id=req.request_id, error=one_line(cause))

    # ---- teardown -----------------------------------------------------------------------------

    def close(self) -> None:
        import gc

        if self.async_llm is not None:
            try:
                self.async_llm.shutdown()
            except Exception as e:  # pragma: no cover - best effort
                log.warning("AsyncLLM shutdown: %s", one_line(e))
            self.async_llm = None
        if self._loop is not None:
            self._loop.stop()
            self._loop = None
        if self.llm is not None:
            try:
                self.llm.llm_engine.engine_core.shutdown()
            except Exception as e:  # pragma: no cover - best effort
                log.warning("LLM shutdown: %s", one_line(e))
            self.llm = None
        gc.collect()
