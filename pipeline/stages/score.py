"""The scoring stage: prompt -> engine -> parse -> soft scores -> one output row per input row.

Runs as a Ray Data actor (`map_batches(ScoreStage, compute=ActorPoolStrategy(...), num_gpus=...)`), so the
engine (and its weights) is built once per actor. Declared input columns are the decode stage's outputs;
the output is a pyarrow table with exactly `schema.OUTPUT_SCHEMA`. Failures are data: a row that fails
at the prompt, engine or parse step comes out with status "error" and the stage name.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.vs2 import templates
from pipeline.config import ScoreConfig
from pipeline.engines.base import EngineOutput, EngineRequest, takes_patches
from pipeline.engines.registry import make_engine
from pipeline.vs2.parse import parse_output
from pipeline.vs2.processor import Patches
from pipeline.schema import OUTPUT_SCHEMA, PREFILTER_COLUMNS, make_seed, one_line, rows_to_table
from pipeline.vs2.soft_score import soft_scores
from pipeline.run.stats import Reporter, storage_retries
from pipeline.stages.prefilter import skip_conditions

log = logging.getLogger(__name__)

# exceptions that mean the engine itself is dead (not one bad request)
FATAL_ENGINE_ERRORS = {"EngineDeadError", "EngineGenerateError_Dead"}

PASS_THROUGH = ("row_id", "key", "shard", "shard_group", "prompt", "meta_json", "source_url", "start_s", "end_s", "content_hash",
                "status", "error_stage", "error", "num_frames", "width", "height", "decode_s") + PREFILTER_COLUMNS  # duration_s is the first of these


class ScoreStage:
    # `patches` (the decode stage's, with decode.patchify) is read when present: the video then comes as patches, not frames
    INPUT_COLUMNS = PASS_THROUGH + ("frames", "frame_indices", "src_fps", "total_frames")

    def __init__(self, cfg: ScoreConfig, stats_name: str | None = None, engine: Any = None,
                 invocation: str = "local") -> None:
        """`invocation` names this run of the driver: in-flight markers live under it, so markers left by
        an earlier, killed invocation never count against a sample in this one."""
        self.cfg = cfg
        self.run_id = cfg.resolved_run_id()
        self.engine = engine if engine is not None else make_engine(cfg.engine, cfg.sampling)
        self.report = Reporter(stats_name)
        self.inflight = InflightLog(inflight_url(cfg, invocation), cfg.output.storage)
        from pipeline.stages.score_cache import ScoreCache

        self.cache = ScoreCache(cfg, invocation if invocation != "local" else None)

    # -- building blocks -------------------------------------------------------------------------
    def _base(self, batch: dict[str, Any], i: int) -> dict[str, Any]:
        row = {c: _py(batch[c][i]) for c in PASS_THROUGH if c in batch}
        for c in PREFILTER_COLUMNS:  # null for rows not decoded: Ray's numpy batches hold them as NaN
            v = row.get(c)
            if c == "phash":
                row[c] = v if isinstance(v, str) else None
            elif v is not None and (not isinstance(v, (int, float)) or v != v):
                row[c] = None
            elif v is not None and OUTPUT_SCHEMA.field(c).type in (pa.int32(), pa.int64()):
                row[c] = int(v)
        for c in ("start_s", "end_s", "source_url"):  # numpy batches carry a null float as NaN, a null string as NaN too
            if isinstance(row.get(c), float) and row[c] != row[c]:
                row[c] = None
        if not isinstance(row.get("content_hash"), str):
            row["content_hash"] = None
        row.update(run_id=self.run_id, model=self.cfg.engine.model, template=self.cfg.prompt.template,
                   seed=make_seed(self.cfg.sampling.seed, row["row_id"]), from_cache=False, duplicate_of=None)
        return row

    def _request(self, row: dict[str, Any], batch: dict[str, Any], i: int) -> EngineRequest:
        if not isinstance(row["prompt"], str):
            raise ValueError(f"prompt is {type(row['prompt']).__name__}, not text")
        user_text = templates.render(self.cfg.prompt.template, row["prompt"])
        frames, patches = None, _patches(batch, i)
        if patches is not None and not takes_patches(self.engine):  # this engine needs frames: back to frames (exact)
            frames, patches = patches.frames(), None
        if patches is None and frames is None:
            frames = np.ascontiguousarray(batch["frames"][i])
            if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or frames.shape[0] < 2:
                raise ValueError(f"frames must be (T>=2, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
        indices = json.loads(_py(batch["frame_indices"][i]) or "[]")
        meta = {"fps": float(batch["src_fps"][i]), "total_num_frames": int(batch["total_frames"][i]),
                "duration": float(batch["duration_s"][i]), "frames_indices": indices}
        return EngineRequest(request_id=row["row_id"], prompt=self.engine.render_prompt(user_text),
                             frames=frames, video_meta=meta, seed=row["seed"], patches=patches)

    def _fill(self, row: dict[str, Any], out: EngineOutput) -> None:
        row.update(raw_output=out.text or None, prompt_tokens=out.prompt_tokens, output_tokens=out.output_tokens)
        if out.error:
            row.update(status="error", error_stage="engine", error=one_line(out.error))
            return
        try:
            parsed = parse_output(out.text)
            soft = soft_scores(parsed.as_tuple(), out.token_ids, out.digit_logprobs, self.engine.tokenizer)
        except Exception as e:  # noqa: BLE001
            row.update(status="error", error_stage="parse", error=one_line(e))
            return
        row.update(visual_quality=parsed.visual_quality, text_alignment=parsed.text_alignment,
                   physical_consistency=parsed.physical_consistency, parse_mode=parsed.parse_mode,
                   out_of_range=parsed.out_of_range, rationale=parsed.rationale)
        for dim, s, e in zip(("visual_quality", "text_alignment", "physical_consistency"), soft.soft, soft.expected):
            row[f"{dim}_soft"] = s
            row[f"{dim}_expected"] = e

    # -- the UDF ---------------------------------------------------------------------------------
    def __call__(self, batch: dict[str, Any]) -> pa.Table:
        from pipeline.stages.score_cache import copy_into

        n = len(batch["row_id"])
        rows = [self._base(batch, i) for i in range(n)]
        # one representative per (clip, prompt) key in this batch; the others copy it (duplicate_of)
        groups: dict[str, list[int]] = {}
        solo: list[int] = []
        for i, row in enumerate(rows):
            if row["status"] != "ok":
                continue
            key = self.cache.key(row)
            (groups.setdefault(key, []).append(i) if key else solo.append(i))
        keys = list(groups)
        hits = self.cache.lookup(keys) if keys else {}
        for k in keys:
            if k in hits:
                for i in groups[k]:
                    copy_into(rows[i], *hits[k])
        misses = [k for k in keys if k not in hits]
        owners = self.cache.claim(misses, [rows[groups[k][0]]["row_id"] for k in misses])
        mine = [k for k, o in zip(misses, owners) if o == rows[groups[k][0]]["row_id"]]
        elsewhere = {k: o for k, o in zip(misses, owners) if o != rows[groups[k][0]]["row_id"]}
        try:
            self._score(rows, batch, [groups[k][0] for k in mine] + solo)
            self._finish(rows, groups, mine)
        finally:
            self.cache.release(mine, [rows[groups[k][0]]["row_id"] for k in mine])
        if elsewhere:  # scored by another batch right now: wait for its result, else score it here
            got = self.cache.wait_for(list(elsewhere), list(elsewhere.values()))
            for k in elsewhere:
                if k in got:
                    for i in groups[k]:
                        copy_into(rows[i], *got[k])
            left = [k for k in elsewhere if k not in got]
            owners = self.cache.claim(left, [rows[groups[k][0]]["row_id"] for k in left])
            try:
                self._score(rows, batch, [groups[k][0] for k in left])
                self._finish(rows, groups, left)
            finally:
                self.cache.release(left, [rows[groups[k][0]]["row_id"] for k in left])
        self.report({**_counts(rows), **storage_retries("score")})  # in-flight markers, the score cache
        return rows_to_table(rows)

    def _score(self, rows: list[dict[str, Any]], batch: dict[str, Any], idx: list[int]) -> None:
        pending: list[tuple[dict[str, Any], EngineRequest]] = []
        for i in sorted(idx):
            row = rows[i]
            try:
                pending.append((row, self._request(row, batch, i)))
            except Exception as e:  # noqa: BLE001
                row.update(status="error", error_stage="prompt", error=one_line(e))
        t0 = time.perf_counter()
        if pending:
            k = self.cfg.sampling.num_samples
            reqs = [_resample(r, j, self.cfg.sampling.seed) for _, r in pending for j in range(k)]
            outputs = self._generate_guarded(reqs)
            per = (time.perf_counter() - t0) / len(pending)
            for i, (row, _) in enumerate(pending):
                row["score_s"] = per
                self._fill_samples(row, outputs[i * k:(i + 1) * k])

    def _finish(self, rows: list[dict[str, Any]], groups: dict[str, list[int]], keys: list[str]) -> None:
        """Store the scored representatives (ok rows only) and copy them into their in-batch duplicates."""
        from pipeline.stages.score_cache import copy_into

        self.cache.store({k: rows[groups[k][0]] for k in keys if rows[groups[k][0]]["status"] == "ok"})
        for k in keys:
            rep = rows[groups[k][0]]
            if rep["status"] == "ok":
                record = {"row_id": rep["row_id"], "fields": {c: rep.get(c) for c in _copied()}}
                for i in groups[k][1:]:
                    copy_into(rows[i], record, False)
            else:  # the representative failed: its duplicates carry the same failure (retryable as one)
                for i in groups[k][1:]:
                    rows[i].update(status=rep["status"], error_stage=rep["error_stage"], error=rep["error"],
                                   duplicate_of=rep["row_id"])

    def _fill_samples(self, row: dict[str, Any], outs: list[EngineOutput]) -> None:
        """Sample 0 decides the row; all samples give the per-dimension mean and spread (soft score where
        the official rule gives one, else the hard score)."""
        self._fill(row, outs[0])
        values: dict[str, list[float]] = {d: [] for d in DIMS}
        parsed = 0
        for j, out in enumerate(outs):
            r = row if j == 0 else {}
            if j:
                self._fill(r, out)
                row["output_tokens"] = (row.get("output_tokens") or 0) + (out.output_tokens or 0)
            if out.error or r.get("parse_mode") in (None, "failed"):
                continue
            parsed += 1
            for d in DIMS:
                v = r.get(f"{d}_soft") if r.get(f"{d}_soft") is not None else r.get(d)
                if v is not None:
                    values[d].append(float(v))
        row["num_samples"] = len(outs)
        row["samples_parsed"] = parsed
        for d in DIMS:
            if values[d]:
                row[f"{d}_mean"] = float(np.mean(values[d]))
                row[f"{d}_std"] = float(np.std(values[d]))


    def _generate(self, reqs: list[EngineRequest]) -> list[EngineOutput]:
        try:
            return self.engine.generate(reqs)
        except Exception as e:  # noqa: BLE001
            if type(e).__name__ in FATAL_ENGINE_ERRORS:
                # The engine process is gone: every later batch on this actor would fail too. Exit, so
                # Ray restarts the actor (engine.max_restarts) and retries this batch on a fresh engine;
                # the in-flight marker isolates the sample if it was the cause.
                log.error("engine died (%s); exiting so Ray restarts this actor", one_line(e))
                os._exit(70)
            return [EngineOutput(request_id=r.request_id, error=one_line(e)) for r in reqs]

    def _generate_guarded(self, reqs: list[EngineRequest]) -> list[EngineOutput]:
        """Generate with in-flight markers, so that work which killed the actor (engine crash, OOM) is
        recognised when Ray retries it on the restarted actor.

        A batch of several samples is marked as a batch; if it is seen again, it died once, and its samples
        are then scored one at a time. A sample scored alone carries its own marker with the number of
        attempts started alone; an attempt that returns clears it, so the count left behind is the number
        of times the engine died while that sample was being scored ALONE. Only a sample that did so
        `SOLO_DEATHS_TO_QUARANTINE` times is quarantined (an error row): one death, even alone (a one-row
        batch hit by a node loss or a kill), never condemns a healthy sample."""
        ids = [r.request_id for r in reqs]
        if len(reqs) > 1:
            batch = self.inflight.key("batch", ids)
            if self.inflight.count(batch) == 0:
                self.inflight.mark(batch, 1)
                outs = self._generate(reqs)
                self.inflight.clear(batch)
                return outs
            outs = [o for r in reqs for o in self._generate_alone(r)]  # isolation: this batch died before
            self.inflight.clear(batch)
            return outs
        return self._generate_alone(reqs[0])

    def _generate_alone(self, req: EngineRequest) -> list[EngineOutput]:
        solo = self.inflight.key("solo", [req.request_id])
        deaths = self.inflight.count(solo)
        if deaths >= SOLO_DEATHS_TO_QUARANTINE:
            return [EngineOutput(request_id=req.request_id, error=(
                f"quarantined: the engine died {deaths} times while scoring this sample alone"))]
        self.inflight.mark(solo, deaths + 1)
        outs = self._generate([req])
        self.inflight.clear(solo)
        return outs


# Deaths of the engine while a sample was being scored alone before it is quarantined. Two: a single death
# can be an outside event (node loss, OOM kill of a neighbour); the same sample killing a fresh engine
# twice, alone, is the sample.
SOLO_DEATHS_TO_QUARANTINE = 2

DIMS = ("visual_quality", "text_alignment", "physical_consistency")


def _copied() -> tuple[str, ...]:
    from pipeline.stages.score_cache import COPIED

    return COPIED


def _resample(req: EngineRequest, j: int, base_seed: int) -> EngineRequest:
    """Request j of a video: j=0 is the video's own request; others get their own id and seed."""
    if j == 0:
        return req
    rid = f"{req.request_id}#{j}"
    return EngineRequest(request_id=rid, prompt=req.prompt, frames=req.frames, video_meta=req.video_meta,
                         seed=make_seed(base_seed, rid), patches=req.patches)


def _patches(batch: dict[str, Any], i: int) -> Patches | None:
    """Row i's video as the decode stage patchified it (`decode.patchify`), else None (the row carries frames).
    Its (T, H, W) are the row's num_frames, height, width; `Patches` checks the bytes against them."""
    if "patches" not in batch:
        return None
    data = batch["patches"][i]
    if data is None or np.size(data) == 0:
        return None
    shape = (int(batch["num_frames"][i]), int(batch["height"][i]), int(batch["width"][i]))
    return Patches(np.ascontiguousarray(data), shape)


class InflightLog:
    """Markers on the output storage naming the work being generated (fsspec, shared by all nodes), each
    holding a count of attempts started. One folder per driver invocation."""

    def __init__(self, url: str, storage: Any) -> None:
        from pipeline.storage import filesystem

        self.fs, self.root = filesystem(url, storage)

    @staticmethod
    def key(kind: str, row_ids: Any) -> str:
        import hashlib

        return f"{kind}-" + hashlib.blake2b("\n".join(sorted(row_ids)).encode(), digest_size=10).hexdigest()

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def count(self, key: str) -> int:
        """Attempts recorded under `key` (0 = none in flight or died)."""
        try:
            return int(self.fs.cat_file(self._path(key)).decode().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def mark(self, key: str, attempts: int) -> None:
        from pipeline.storage import refused

        with refused(self.fs, self._path(key)):
            self.fs.makedirs(self.root, exist_ok=True)
            self.fs.pipe_file(self._path(key), str(attempts).encode())

    def clear(self, key: str) -> None:
        from pipeline.storage import refused

        try:
            with refused(self.fs, self._path(key), "DELETE"):
                self.fs.rm(self._path(key))
        except FileNotFoundError:
            pass


def inflight_root(cfg: ScoreConfig) -> str:
    """Every invocation's in-flight markers of this run."""
    return f"{cfg.output.path.rstrip('/')}/_vscore/inflight/{cfg.resolved_run_id()}"


def inflight_url(cfg: ScoreConfig, invocation: str) -> str:
    return f"{inflight_root(cfg)}/{invocation}"


def _counts(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Counter deltas of a batch: rows out, ok, errors per stage, rows the prefilter skipped (total and per
    failed condition, `skipped:<condition>`), engine seconds over the rows the engine scored."""
    c: dict[str, float] = {"rows_scored": len(rows), "rows_ok": 0, "output_tokens": 0, "prompt_tokens": 0}
    for r in rows:
        c["output_tokens"] += r.get("output_tokens") or 0
        c["prompt_tokens"] += r.get("prompt_tokens") or 0
        if r.get("score_s") is not None:
            c["engine_rows"] = c.get("engine_rows", 0) + 1
            c["engine_s"] = c.get("engine_s", 0.0) + r["score_s"]
        if r["status"] == "ok":
            c["rows_ok"] += 1
        elif r["status"] == "skipped":
            c["rows_prefiltered"] = c.get("rows_prefiltered", 0) + 1
            for cond in skip_conditions(r.get("error")):
                c[f"skipped:{cond}"] = c.get(f"skipped:{cond}", 0) + 1
        else:
            k = f"errors_{r.get('error_stage') or 'unknown'}"
            c[k] = c.get(k, 0) + 1
    return c


def _py(v: Any) -> Any:
    """numpy scalar -> python scalar (None stays None)."""
    if isinstance(v, np.generic):
        return v.item()
    return v
