"""The run id follows every setting that can change a row and no other: each leaf field of the config is
changed in turn to another valid value, and the run id must change exactly for the row-affecting ones.
The expected classification is written out here, independently of `config.NOT_ROW_AFFECTING`, so a
field moved between the two lists, or a new field, fails until this test is updated on purpose."""

from __future__ import annotations

import typing

import pytest
from pydantic import BaseModel, ValidationError

from pipeline.config import ScoreConfig

ROW_AFFECTING = {
    "input.max_sample_bytes", "input.video_extensions", "input.prompt_fields", "input.columns.*", "input.manifest_format",
    "input.manifest_block_rows", "input.manifest_block_bytes",
    "decode.fps", "decode.min_frames", "decode.max_frames", "decode.min_pixels", "decode.max_pixels",
    "decode.total_pixels", "decode.max_decoded_pixels", "decode.max_duration_s", "decode.max_bytes",
    "decode.decode_timeout_s", "decode.apply_rotation",
    "prompt.template",
    "prefilter.preset", "prefilter.where",
    "sampling.*",
    "engine.kind", "engine.model", "engine.revision", "engine.dtype", "engine.device", "engine.tensor_parallel_size",
    "engine.max_model_len", "engine.engine_kwargs",
    "output.shards_per_group",
}
NOT_ROW_AFFECTING = {
    "input.shards", "input.manifest", "input.storage.*", "input.samples_per_block", "input.limit", "input.read_num_cpus",
    "input.fetch_concurrency",
    "decode.threads", "decode.skip_nonref", "decode.patchify", "decode.batch_size", "decode.num_cpus", "decode.actors",
    "decode.min_actors", "decode.actors_per_engine", "decode.memory",
    "engine.max_num_seqs", "engine.max_num_batched_tokens", "engine.gpu_memory_utilization", "engine.enforce_eager",
    "engine.batch_size", "engine.batches_in_flight", "engine.actors", "engine.num_gpus", "engine.num_cpus",
    "engine.max_restarts", "engine.max_task_retries", "engine.resources", "engine.video_processor",
    "output.path", "output.storage.*", "output.run_id", "output.quarantine_path", "output.min_rows_per_file",
    "output.partition_cols", "output.state_fold_every_s", "output.target_file_mb", "output.compact",
    "ray.*", "cache.url", "cache.storage.*", "cache.dedup",
}
BASE = {"input": {"shards": "s3://b/shard-*.tar"}, "output": {"path": "s3://b/out"}}
# input.shards and input.manifest exclude each other: the manifest fields are changed on a manifest config
BASE_MANIFEST = {"input": {"manifest": "s3://b/m.parquet"}, "output": {"path": "s3://b/out"}}


def _leaves(model: type[BaseModel], prefix: str = "") -> list[tuple[str, typing.Any]]:
    out = []
    for name, f in model.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.extend(_leaves(ann, f"{prefix}{name}."))
        else:
            out.append((f"{prefix}{name}", ann))
    return out


def _classified(path: str, names: set[str]) -> bool:
    return any(path == n or (n.endswith(".*") and path.startswith(n[:-1])) for n in names)


# fields whose valid values the generic candidates below cannot guess
CANDIDATES = {"prefilter.where": ["motion >= 1", "least(src_width, src_height) >= 360"]}


def _candidates(ann: typing.Any, current: typing.Any) -> list[typing.Any]:
    """Other values of the field's type, most likely valid first."""
    args = typing.get_args(ann)
    origin = typing.get_origin(ann)
    if origin is typing.Literal:
        return [a for a in args if a != current]
    if args and origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return [c for a in args if a is not type(None) for c in _candidates(a, current)]
    if ann is bool:
        return [not current]
    if ann is int:
        return [(current or 0) + 1, 3, 1 << 20]
    if ann is float:
        return [(current or 1.0) / 2, (current or 1.0) * 2, 0.5]
    if ann is str:
        return ["transformers", "x-changed", "s3://other/x"]
    if origin is list:
        return [list(current or []) + ["mpg"], ["run_id"]]
    if origin is dict:
        return [{"changed": "1"}]
    raise AssertionError(f"no candidate values for {ann}")


def _set(tree: dict, path: str, value: typing.Any) -> dict:
    import copy

    tree = copy.deepcopy(tree)
    node = tree
    *parents, leaf = path.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return tree


def _get(cfg: ScoreConfig, path: str) -> typing.Any:
    v: typing.Any = cfg
    for p in path.split("."):
        v = getattr(v, p)
    return v


LEAVES = _leaves(ScoreConfig)


def test_every_field_is_classified_once():
    paths = [p for p, _ in LEAVES]
    unclassified = [p for p in paths if not _classified(p, ROW_AFFECTING) and not _classified(p, NOT_ROW_AFFECTING)]
    both = [p for p in paths if _classified(p, ROW_AFFECTING) and _classified(p, NOT_ROW_AFFECTING)]
    assert not unclassified, f"classify these config fields in this test and in config.NOT_ROW_AFFECTING: {unclassified}"
    assert not both


@pytest.mark.parametrize("path,ann", LEAVES, ids=[p for p, _ in LEAVES])
def test_run_id_changes_exactly_with_row_affecting_fields(path, ann):
    tree = BASE_MANIFEST if path.startswith("input.manifest") else BASE
    base = ScoreConfig.model_validate(tree)
    current = _get(base, path)
    for value in CANDIDATES.get(path) or _candidates(ann, current):
        if value == current:
            continue
        try:
            changed = ScoreConfig.model_validate(_set(tree, path, value))
        except ValidationError:
            continue
        if _get(changed, path) == current:
            continue
        break
    else:
        pytest.fail(f"found no other valid value for {path}")
    # the fingerprint is the default run id (`vs2-<fingerprint>`); an explicit output.run_id replaces it
    differs = changed.scoring_fingerprint() != base.scoring_fingerprint()
    assert differs == _classified(path, ROW_AFFECTING), (path, value)
    if path != "output.run_id":
        assert (changed.resolved_run_id() != base.resolved_run_id()) == differs


def test_vllm_and_transformers_runs_differ():
    """The reported case: the same config on two engines must not share a run (or resume into each other)."""
    a = ScoreConfig.model_validate(_set(BASE, "engine.kind", "vllm"))
    b = ScoreConfig.model_validate(_set(BASE, "engine.kind", "transformers"))
    assert a.resolved_run_id() != b.resolved_run_id()


def test_explicit_run_id_refuses_another_engine(tmp_path):
    from pipeline.run.resume import RunConflict, guard_fingerprint

    base = _set(_set(BASE, "output.path", str(tmp_path / "o")), "output.run_id", "fixed")
    guard_fingerprint(ScoreConfig.model_validate(base))
    with pytest.raises(RunConflict):
        guard_fingerprint(ScoreConfig.model_validate(_set(base, "engine.kind", "transformers")))
    with pytest.raises(RunConflict):
        guard_fingerprint(ScoreConfig.model_validate(_set(base, "engine.max_model_len", 4096)))
