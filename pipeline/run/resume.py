"""Exactly-once resume: what a previous run with the same output and run id already committed.

State lives next to the output (any fsspec URL), so it works the same under `ray job submit`, RayJob and
Slurm: commit markers (written by `pipeline.stages.sink`), shard manifests (written by the read stage when a
shard has been fully listed) and the run's config fingerprint.

- committed rows are skipped at the read stage (never decoded or scored again);
- a shard whose manifest rows are all committed is not read at all;
- data files of the run that no marker names are leftovers of a killed run: deleted before starting;
- a different score-affecting config under the same explicit run id is refused (the default run id
  is derived from the config, so changing the config writes under a new run id instead).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pipeline.config import ScoreConfig
from pipeline.errors import UsageError
from pipeline.stages.sink import COMMITS_DIR, commit_dir, partition_segment, quarantine_url
from pipeline.storage import filesystem, input_prefixes, refused

log = logging.getLogger(__name__)

RUNS_DIR = "_vscore/runs"
SHARDS_DIR = "_vscore/shards"


class RunConflict(UsageError):
    """The output already holds this run id made with other score-affecting settings."""


def shard_manifest_dir(cfg: ScoreConfig) -> str:
    return f"{cfg.output.path.rstrip('/')}/{SHARDS_DIR}/{cfg.resolved_run_id()}"


def shard_manifest_name(shard: str) -> str:
    return hashlib.blake2b(shard.encode(), digest_size=10).hexdigest() + ".json"


@dataclass
class ResumeState:
    committed: set[str] = field(default_factory=set)
    committed_files: set[str] = field(default_factory=set)
    markers: list[dict[str, Any]] = field(default_factory=list)
    shard_rows: dict[str, list[str]] = field(default_factory=dict)
    committed_by_shard: dict[str, list[str]] = field(default_factory=dict)

    def shard_done(self, shard: str) -> bool:
        rows = self.shard_rows.get(shard)
        return rows is not None and all(r in self.committed for r in rows)

    def totals(self) -> dict[str, Any]:
        """Sums over the committed markers: rows, errors by stage, parse modes of ok rows, output tokens, rows
        the prefilter skipped (in all and per failed condition; neither ok nor errors) and the engine seconds
        over the rows the engine scored."""
        errs: Counter[str] = Counter()
        modes: Counter[str] = Counter()
        reasons: Counter[str] = Counter()
        rows = tokens = skipped = engine_rows = 0
        engine_s = 0.0
        for m in self.markers:
            rows += m["rows"]
            errs.update(m.get("errors_by_stage", {}))
            modes.update(m.get("parse_modes", {}))
            tokens += m.get("output_tokens", 0)
            skipped += m.get("skipped", 0)
            reasons.update(m.get("skip_reasons", {}))
            engine_rows += m.get("engine_rows", 0)
            engine_s += m.get("engine_s", 0.0)
        return {"rows": rows, "errors_by_stage": dict(errs), "parse_modes": dict(modes), "output_tokens": tokens,
                "skipped": skipped, "skip_reasons": dict(reasons), "engine_rows": engine_rows, "engine_s": engine_s}


def _read_json_files(fs: Any, directory: str) -> list[dict[str, Any]]:
    # s3fs caches listings per filesystem instance (fsspec reuses instances in a process): without this, the
    # state read at the end of a run (its summary) or by a second run in the same process misses new markers
    fs.invalidate_cache(directory)
    if not fs.exists(directory):
        return []
    paths = [p for p in fs.ls(directory, detail=False) if p.endswith(".json")]
    if not paths:
        return []
    blobs = fs.cat(paths)
    return [json.loads(blobs[p]) for p in paths]


def guard_fingerprint(cfg: ScoreConfig) -> None:
    """Record the run's config fingerprint; refuse a different one under the same run id."""
    fs, root = filesystem(cfg.output.path, cfg.output.storage)
    path = f"{root.rstrip('/')}/{RUNS_DIR}/{cfg.resolved_run_id()}.json"
    fp = cfg.scoring_fingerprint()
    prefixes = input_prefixes(cfg.input.shards or cfg.input.manifest or "")
    if fs.exists(path):
        old = json.loads(fs.cat(path))
        if old.get("config_fingerprint") != fp:
            raise RunConflict(
                f"output {cfg.output.path} already holds run {cfg.resolved_run_id()!r} made with different "
                f"score-affecting settings (fingerprint {old.get('config_fingerprint')} != {fp}); refusing to mix "
                "results. Use another output.run_id (or leave it unset: the default follows the config).")
        if set(prefixes) <= set(old.get("input_prefixes", [])):
            return
        prefixes = sorted(set(prefixes) | set(old.get("input_prefixes", [])))
    fs.makedirs(f"{root.rstrip('/')}/{RUNS_DIR}", exist_ok=True)
    # input_prefixes: where this run read its inputs; tools that reopen sources (vscore filter) read only there
    record = {"run_id": cfg.resolved_run_id(), "config_fingerprint": fp, "model": cfg.engine.model,
              "template": cfg.prompt.template, "input_prefixes": prefixes}
    if cfg.input.manifest:  # how the manifest was read (never credentials): `vscore filter` maps rows back to it
        record["input"] = cfg.input.model_dump(mode="json", exclude={"storage"})
    fs.pipe_file(path, json.dumps(record).encode())


def run_record(scores_url: str, storage: Any, run_id: str) -> dict[str, Any] | None:
    """The record `guard_fingerprint` wrote for `run_id` under a scores dataset root, if there is one."""
    fs, root = filesystem(scores_url, storage)
    path = f"{root.rstrip('/')}/{RUNS_DIR}/{run_id}.json"
    try:
        return json.loads(fs.cat(path))
    except (FileNotFoundError, ValueError, IsADirectoryError, NotADirectoryError):
        return None


def load_state(cfg: ScoreConfig) -> ResumeState:
    fs, root = filesystem(cfg.output.path, cfg.output.storage)
    run_id = cfg.resolved_run_id()
    st = ResumeState()
    for m in _read_json_files(fs, commit_dir(root, run_id)):
        st.markers.append(m)
        st.committed.update(m["row_ids"])
        for shard, ids in m.get("rows_by_shard", {}).items():
            st.committed_by_shard.setdefault(shard, []).extend(ids)
        st.committed_files.update(m["files"])
        st.committed_files.update(m.get("quarantine_files", []))
    mfs, mdir = filesystem(shard_manifest_dir(cfg), cfg.output.storage)
    for m in _read_json_files(mfs, mdir):
        st.shard_rows[m["shard"]] = m["row_ids"]
    return st


def remove_uncommitted(cfg: ScoreConfig, state: ResumeState) -> list[str]:
    """Delete this run's data and quarantine files that no commit marker names (a killed run's leftovers)."""
    removed = []
    run_id = cfg.resolved_run_id()
    for url in (cfg.output.path, quarantine_url(cfg.output)):
        fs, root = filesystem(url, cfg.output.storage)
        if "run_id" not in cfg.output.partition_cols:
            log.warning("output is not partitioned by run_id: leftovers of interrupted runs are not cleaned up")
            return removed
        base = f"{root.rstrip('/')}/{partition_segment('run_id', run_id)}"
        fs.invalidate_cache(base)  # a cached listing (s3fs) could hide a killed run's files
        if not fs.exists(base):
            continue
        for path in fs.find(base):
            if COMMITS_DIR in path or "/_vscore/" in path:
                continue
            name = path.rsplit("/", 1)[-1]
            if name.startswith("part-") and name.endswith((".parquet", ".parquet.tmp")) and path not in state.committed_files:
                fs.rm(path)
                removed.append(path)
    if removed:
        log.info("removed %d uncommitted file(s) left by an interrupted run", len(removed))
    return removed


def write_shard_manifest(manifest_dir: str, storage: Any, shard: str, row_ids: list[str]) -> None:
    fs, root = filesystem(manifest_dir, storage)
    path = f"{root}/{shard_manifest_name(shard)}"
    with refused(fs, path):
        fs.makedirs(root, exist_ok=True)
        fs.pipe_file(path, json.dumps({"shard": shard, "rows": len(row_ids), "row_ids": row_ids}).encode())
