"""The scoring stage on its own (no Ray): rows in -> one output row each, num_samples aggregation,
error rows passed through, prompt errors contained."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.engines.base import EngineOutput
from pipeline.schema import OUTPUT_SCHEMA, make_seed
from pipeline.stages.score import ScoreStage


class SeedEngine:
    """Answers with scores derived from the request seed, so samples differ; records what it saw."""

    name = "seed"
    tokenizer = None

    def __init__(self):
        self.seen = []

    def render_prompt(self, user_text):
        return "<chat>" + user_text

    def generate(self, reqs):
        self.seen.extend(reqs)
        outs = []
        for r in reqs:
            v = 1 + r.seed % 5
            outs.append(EngineOutput(request_id=r.request_id, text=f"visual quality: {v}; text-to-video alignment: 4, "
                                     f"physical/common-sense consistency: 2", token_ids=[], prompt_tokens=10, output_tokens=7))
        return outs

    def close(self):
        pass


def _batch(n, bad=()):
    frames = [np.zeros((2, 28, 56, 3), np.uint8) for _ in range(n)]
    return {
        "row_id": np.array([f"r{i}" for i in range(n)], dtype=object), "key": np.array([f"k{i}" for i in range(n)], dtype=object),
        "shard": np.array(["s"] * n, dtype=object), "shard_group": np.array(["g00000"] * n, dtype=object),
        "prompt": np.array([f"p{i}" for i in range(n)], dtype=object), "meta_json": np.array([None] * n, dtype=object),
        "status": np.array(["error" if i in bad else "ok" for i in range(n)], dtype=object),
        "error_stage": np.array(["decode" if i in bad else None for i in range(n)], dtype=object),
        "error": np.array(["boom" if i in bad else None for i in range(n)], dtype=object),
        "num_frames": np.array([2] * n), "width": np.array([56] * n), "height": np.array([28] * n),
        "duration_s": np.array([1.0] * n), "decode_s": np.array([0.1] * n), "frames": frames,
        "frame_indices": np.array([json.dumps([0, 1])] * n, dtype=object), "src_fps": np.array([2.0] * n),
        "total_frames": np.array([2] * n),
    }


@pytest.mark.parametrize("k", [1, 4])
def test_num_samples_mean_and_spread(tmp_path, k):
    cfg = load_config(None, ["input.shards=x", f"output.path={tmp_path}", f"sampling.num_samples={k}"])
    eng = SeedEngine()
    table = ScoreStage(cfg, engine=eng)(_batch(3, bad={1}))
    assert table.schema == OUTPUT_SCHEMA and table.num_rows == 3
    rows = table.to_pylist()
    assert rows[1]["status"] == "error" and rows[1]["error"] == "boom"  # passed through untouched
    assert len(eng.seen) == 2 * k  # the error row is never sent to the engine
    for r in (rows[0], rows[2]):
        seeds = [make_seed(0, r["row_id"])] + [make_seed(0, f"{r['row_id']}#{j}") for j in range(1, k)]
        vs = [1 + s % 5 for s in seeds]
        assert r["seed"] == seeds[0] and r["visual_quality"] == vs[0]  # sample 0 decides the hard score
        assert r["num_samples"] == k and r["samples_parsed"] == k
        assert r["visual_quality_mean"] == pytest.approx(np.mean(vs)) and r["visual_quality_std"] == pytest.approx(np.std(vs))
        assert r["text_alignment_mean"] == 4 and r["text_alignment_std"] == 0
        assert r["output_tokens"] == 7 * k
    assert rows[0]["seed"] != rows[2]["seed"]


def test_prompt_error_contained(tmp_path):
    cfg = load_config(None, ["input.shards=x", f"output.path={tmp_path}"])
    batch = _batch(3)
    batch["prompt"][0] = None
    batch["frames"][1] = np.zeros((5, 5), np.uint8)
    rows = ScoreStage(cfg, engine=SeedEngine())(batch).to_pylist()
    assert [r["error_stage"] for r in rows] == ["prompt", "prompt", None]
    assert "not text" in rows[0]["error"] and "frames must be" in rows[1]["error"]
    assert rows[2]["status"] == "ok" and rows[2]["parse_mode"] == "strict"


def test_patchified_rows_reach_each_engine_the_way_it_takes_them(tmp_path):
    """Rows decoded with decode.patchify carry `patches`: an engine that takes them gets them untouched (no frames), any
    other engine gets the frames back, byte for byte; the rows are the same either way."""
    from pipeline.vs2.processor import Patches

    class PatchEngine(SeedEngine):
        takes_patches = True

    cfg = load_config(None, ["input.shards=x", f"output.path={tmp_path}"])
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (4, 56, 84, 3), dtype=np.uint8) for _ in range(2)]
    batch = _batch(2)
    batch.update(num_frames=np.array([4, 4]), width=np.array([84, 84]), height=np.array([56, 56]),
                 frames=[np.zeros((0, 0, 0, 3), np.uint8)] * 2, patches=[Patches.of(f).data for f in frames])
    plain, patched = SeedEngine(), PatchEngine()
    a = ScoreStage(cfg, engine=plain)(batch).to_pylist()
    b = ScoreStage(cfg.model_copy(update={"output": cfg.output.model_copy(update={"path": str(tmp_path / "b")})}),
                   engine=patched)(batch).to_pylist()
    for r in plain.seen:
        assert r.patches is None and np.array_equal(r.frames, frames[int(r.request_id[1:])])
    for r in patched.seen:
        assert r.frames is None and r.patches.frame_shape == (4, 56, 84)
        assert np.shares_memory(r.patches.data, batch["patches"][int(r.request_id[1:])])  # untouched: no copy
    assert [r["status"] for r in a] == [r["status"] for r in b] == ["ok", "ok"]
    assert [r["visual_quality"] for r in a] == [r["visual_quality"] for r in b]
    batch["width"] = np.array([56, 84])  # patches that do not match the row's frame size: a prompt error row
    rows = ScoreStage(cfg.model_copy(update={"output": cfg.output.model_copy(update={"path": str(tmp_path / "c")})}),
                      engine=PatchEngine())(batch).to_pylist()
    assert rows[0]["error_stage"] == "prompt" and "patches of frames 4x56x56" in rows[0]["error"] and rows[1]["status"] == "ok"


def test_engine_exception_becomes_error_rows(tmp_path):
    class Broken(SeedEngine):
        def generate(self, reqs):
            raise RuntimeError("CUDA error: device-side assert\nsecond line")

    cfg = load_config(None, ["input.shards=x", f"output.path={tmp_path}"])
    rows = ScoreStage(cfg, engine=Broken())(_batch(2)).to_pylist()
    assert all(r["status"] == "error" and r["error_stage"] == "engine" for r in rows)
    assert rows[0]["error"] == "RuntimeError: CUDA error: device-side assert second line"  # one line


def test_prompt_longer_than_context_is_an_engine_error_row(tmp_path, tiny_model_dir):
    """A huge prompt (longer than the engine's context) becomes an error row; the other rows score."""
    from pipeline.engines.registry import make_engine

    cfg = load_config(None, ["input.shards=x", f"output.path={tmp_path}", "engine.kind=transformers",
                             f"engine.model={tiny_model_dir}", "engine.dtype=float32", "engine.device=cpu",
                             "engine.max_model_len=2048", "sampling.max_new_tokens=8"])
    batch = _batch(2)
    batch["prompt"][0] = "word " * 5000
    rows = ScoreStage(cfg, engine=make_engine(cfg.engine, cfg.sampling))(batch).to_pylist()
    assert rows[0]["status"] == "error" and rows[0]["error_stage"] == "engine" and "max_model_len" in rows[0]["error"]
    assert rows[1]["status"] == "ok" and 0 < rows[1]["output_tokens"] <= 8


class _Died(BaseException):
    """Stands for the actor process dying mid-generate (os._exit): nothing after it runs."""


class DyingEngine(SeedEngine):
    """Dies (raises _Died) whenever a request's prompt contains one of `poison`, or on the next
    `die_next` calls whatever the prompt (an outside kill)."""

    def __init__(self, poison=(), die_next=0):
        super().__init__()
        self.poison, self.die_next, self.calls = poison, die_next, []

    def generate(self, reqs):
        self.calls.append([r.request_id for r in reqs])
        if self.die_next:
            self.die_next -= 1
            raise _Died()
        if any(p in r.prompt for r in reqs for p in self.poison):
            raise _Died()
        return super().generate(reqs)


def _attempts(cfg, batch, engine_factory, invocation="inv1", max_attempts=6):
    """Run the stage like Ray does: a death restarts the actor (a new ScoreStage) and retries the batch."""
    for attempt in range(max_attempts):
        stage = ScoreStage(cfg, engine=engine_factory(attempt), invocation=invocation)
        try:
            return attempt, stage(batch).to_pylist()
        except _Died:
            continue
    raise AssertionError("never finished")


def test_one_death_of_a_one_row_batch_does_not_quarantine(tmp_path):
    """The reported defect: a one-row batch killed once from outside must come back ok on the retry."""
    cfg = load_config(None, ["input.shards=x", f"output.path={tmp_path}"])
    attempt, rows = _attempts(cfg, _batch(1), lambda a: DyingEngine(die_next=1 if a == 0 else 0))
    assert attempt == 1 and rows[0]["status"] == "ok" and rows[0]["visual_quality"] is not None


def test_healthy_rows_survive_one_death_of_their_batch(tmp_path):
    cfg = load_config(None, ["input.shards=x", f"output.path={tmp_path}"])
    attempt, rows = _attempts(cfg, _batch(4), lambda a: DyingEngine(die_next=1 if a == 0 else 0))
    assert attempt == 1 and [r["status"] for r in rows] == ["ok"] * 4


@pytest.mark.parametrize("n", [1, 4])
def test_only_the_poison_sample_is_quarantined(tmp_path, n):
    cfg = load_config(None, ["input.shards=x", f"output.path={tmp_path}"])
    batch = _batch(n)
    batch["prompt"][n - 1] = "POISON"
    engines = []
    attempt, rows = _attempts(cfg, batch, lambda a: engines.append(DyingEngine(poison=("POISON",))) or engines[-1])
    # n=4: dies as a batch, then twice alone; n=1: dies twice alone. Then quarantined without an engine call.
    assert attempt == (3 if n > 1 else 2)
    assert rows[-1]["status"] == "error" and rows[-1]["error_stage"] == "engine"
    assert "died 2 times while scoring this sample alone" in rows[-1]["error"]
    assert all(r["status"] == "ok" and r["visual_quality"] is not None for r in rows[:-1])
    assert engines[-1].calls == [[f"r{i}"] for i in range(n - 1)]  # the poison sample was not sent again


def test_markers_of_an_earlier_invocation_quarantine_nothing(tmp_path):
    """A driver killed mid-run leaves markers behind; the next invocation scores the same rows normally."""
    cfg = load_config(None, ["input.shards=x", f"output.path={tmp_path}"])
    for _ in range(2):  # the engine died twice alone on r0 in invocation A
        with pytest.raises(_Died):
            ScoreStage(cfg, engine=DyingEngine(die_next=1), invocation="A")(_batch(1))
    rows = ScoreStage(cfg, engine=DyingEngine(), invocation="B")(_batch(1)).to_pylist()
    assert rows[0]["status"] == "ok"
    again = ScoreStage(cfg, engine=DyingEngine(), invocation="A")(_batch(1)).to_pylist()
    assert again[0]["status"] == "error" and "quarantined" in again[0]["error"]  # within A it would be
