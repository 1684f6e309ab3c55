"""Exactly-once resume: what a previous run with the same output and run id already committed.

State lives next to the output (any fsspec URL), so it works the same under `ray job submit`, RayJob and
Slurm: commit markers (written by `pipeline.stages.sink`), shard manifests (written by the read stage when a
shard has been fully listed) and the run's config fingerprint. `consolidate` folds markers and manifests into
one compact checkpoint per run (`_vscore/state/<run>.json`): a fully committed shard is a name and a count,
row ids are kept only for partially committed shards, so start-up and the summary cost grows with shards
(and write-task digests), not rows (docs/performance.md, "Control plane at scale").

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
from pipeline.storage import filesystem, input_prefixes, put_atomic, refused

log = logging.getLogger(__name__)

RUNS_DIR = "_vscore/runs"
SHARDS_DIR = "_vscore/shards"


class RunConflict(UsageError):
    """The output already holds this run id made with other score-affecting settings."""


def shard_manifest_dir(cfg: ScoreConfig) -> str:
    return f"{cfg.output.path.rstrip('/')}/{SHARDS_DIR}/{cfg.resolved_run_id()}"


def shard_manifest_name(shard: str) -> str:
    return hashlib.blake2b(shard.encode(), digest_size=10).hexdigest() + ".json"


STATE_DIR = "_vscore/state"  # one compact checkpoint per run: done shards with counts, partial shards' ids
STATE_VERSION = 1


def state_path(root: str, run_id: str) -> str:
    return f"{root.rstrip('/')}/{STATE_DIR}/{run_id}.json"


def _empty_totals() -> dict[str, Any]:
    return {"rows": 0, "errors_by_stage": {}, "parse_modes": {}, "output_tokens": 0, "skipped": 0, "skip_reasons": {},
            "engine_rows": 0, "engine_s": 0.0, "from_cache": 0, "duplicates": 0}


def _add_totals(acc: dict[str, Any], m: dict[str, Any]) -> None:
    acc["rows"] += m.get("rows", 0)
    for k in ("errors_by_stage", "parse_modes", "skip_reasons"):
        c = Counter(acc[k])
        c.update(m.get(k, {}))
        acc[k] = dict(c)
    for k in ("output_tokens", "skipped", "engine_rows", "from_cache", "duplicates"):
        acc[k] += m.get(k, 0)
    acc["engine_s"] += m.get("engine_s", 0.0)


@dataclass
class ResumeState:
    """What a run has committed, in a form that grows with shards, not rows.

    - `done`: shard -> row count, for shards whose every row (per the read stage's shard manifest) is committed;
    - `partial`: shard -> committed row ids, only for shards with some but not all rows committed;
    - `shard_rows`: manifest row ids, only for shards not done;
    - `digests`: the write tasks (commit markers) already counted, so a marker is never counted twice;
    - `acc`: totals over every committed row (the summary reads these, never the rows).
    """
    done: dict[str, int] = field(default_factory=dict)
    partial: dict[str, set[str]] = field(default_factory=dict)
    shard_rows: dict[str, list[str]] = field(default_factory=dict)
    digests: set[str] = field(default_factory=set)
    retired: set[str] = field(default_factory=set)  # digests whose files were rewritten (compaction, retry)
    # committed rewrites not yet rolled forward: new digest -> {"old": [url], "moves": [[staged url, final url]]}
    pending: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    acc: dict[str, Any] = field(default_factory=_empty_totals)
    # objects folded into the state by this load: removed once a checkpoint holding them is written
    folded_paths: list[str] = field(default_factory=list)
    new_markers: int = 0

    @property
    def committed_by_shard(self) -> dict[str, list[str]]:
        return {s: sorted(ids) for s, ids in self.partial.items()}

    @property
    def committed_rows(self) -> int:
        return int(self.acc["rows"])

    def is_committed_file(self, name: str) -> bool:
        """`part-<digest>.parquet` is committed iff a counted write task (or compaction) has that digest."""
        return name.startswith("part-") and name.endswith(".parquet") and name[5:-8] in self.digests

    def shard_done(self, shard: str) -> bool:
        return shard in self.done

    def shard_size(self, shard: str) -> int:
        """Rows the shard holds (as far as it has been listed to its end), 0 if unknown."""
        if shard in self.done:
            return self.done[shard]
        return len(self.shard_rows.get(shard, ()))

    def totals(self) -> dict[str, Any]:
        """Sums over the committed markers: rows, errors by stage, parse modes of ok rows, output tokens, rows
        the prefilter skipped (in all and per failed condition; neither ok nor errors), the engine seconds
        over the rows the engine scored, rows answered from the score cache and in-run duplicates."""
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.acc.items()}

    def promote(self) -> None:
        """Move shards whose listed rows are all committed from partial to done (counts only)."""
        for shard, ids in list(self.shard_rows.items()):
            got = self.partial.get(shard, set())
            if len(got) >= len(ids) and all(r in got for r in ids):
                self.done[shard] = len(ids)
                self.partial.pop(shard, None)
                del self.shard_rows[shard]


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


def _read_checkpoint(fs: Any, path: str) -> dict[str, Any] | None:
    try:
        return json.loads(fs.cat(path))
    except FileNotFoundError:
        return None


def load_state(cfg: ScoreConfig) -> ResumeState:
    """The run's compact checkpoint, plus the commit markers and shard manifests written since it (the
    markers of write tasks it already counts are recognised by digest and ignored: a crash between writing
    the checkpoint and deleting them loses and double-counts nothing)."""
    fs, root = filesystem(cfg.output.path, cfg.output.storage)
    run_id = cfg.resolved_run_id()
    st = ResumeState()
    ck = _read_checkpoint(fs, state_path(root, run_id))
    if ck:
        st.done = {k: int(v) for k, v in ck.get("done", {}).items()}
        st.partial = {k: set(v) for k, v in ck.get("partial", {}).items()}
        st.digests = set(ck.get("digests", ()))
        st.retired = set(ck.get("retired", ()))
        st.pending = dict(ck.get("pending", {}))
        st.acc.update(ck.get("totals", {}))
    cdir = commit_dir(root, run_id)
    # s3fs caches listings per filesystem instance (fsspec reuses instances in a process): without this, the
    # state read at the end of a run (its summary) or by a second run in the same process misses new markers
    fs.invalidate_cache(cdir)
    if fs.exists(cdir):
        names = [p for p in fs.ls(cdir, detail=False) if p.endswith(".json")]
        fresh, stale = [], []
        for p in names:
            digest = p.rsplit("/", 1)[-1][:-len(".json")]
            (st.folded_paths if digest in st.digests else stale if digest in st.retired else fresh).append(p)
        if stale:  # a write task Ray ran again after its files were rewritten: its new files go with its marker
            blobs = fs.cat(stale)
            qfs = filesystem(quarantine_url(cfg.output), cfg.output.storage)[0]
            for p in stale:
                m = json.loads(blobs[p])
                files = m.get("files", []) + (m.get("quarantine_files", []) if qfs is fs else [])
                st.folded_paths += [f for f in files if f.rsplit("/", 1)[-1] == f"part-{m['digest']}.parquet"]
                st.folded_paths.append(p)
        if fresh:
            blobs = fs.cat(fresh)
            for p in fresh:
                m = json.loads(blobs[p])
                if m["digest"] in st.digests or m["digest"] in st.retired:
                    st.folded_paths.append(p)
                    continue
                st.digests.add(m["digest"])
                st.new_markers += 1
                st.folded_paths.append(p)
                _add_totals(st.acc, m)
                by_shard = m.get("rows_by_shard")
                if by_shard is None:  # markers of older versions
                    by_shard = {"": m.get("row_ids", [])}
                for shard, ids in by_shard.items():
                    if shard not in st.done:
                        st.partial.setdefault(shard, set()).update(ids)
    mfs, mdir = filesystem(shard_manifest_dir(cfg), cfg.output.storage)
    mfs.invalidate_cache(mdir)
    if mfs.exists(mdir):
        done_names = {shard_manifest_name(s) for s in st.done}
        paths = []
        for p in mfs.ls(mdir, detail=False):
            if not p.endswith(".json"):
                continue
            (st.folded_paths if p.rsplit("/", 1)[-1] in done_names else paths).append(p)
        if paths:
            blobs = mfs.cat(paths)
            for p in paths:
                m = json.loads(blobs[p])
                st.shard_rows[m["shard"]] = m["row_ids"]
        before = set(st.done)
        st.promote()
        names = {shard_manifest_name(s) for s in set(st.done) - before}
        st.folded_paths += [p for p in paths if p.rsplit("/", 1)[-1] in names]
    return st


_put_atomic = put_atomic  # (kept for callers of the earlier name)


def write_checkpoint(cfg: ScoreConfig, st: ResumeState) -> None:
    """The run's compact state in one atomic write (the commit point of folds, retries and compactions)."""
    fs, root = filesystem(cfg.output.path, cfg.output.storage)
    record = {"version": STATE_VERSION, "run_id": cfg.resolved_run_id(), "done": st.done,
              "partial": {s: sorted(v) for s, v in st.partial.items()}, "digests": sorted(st.digests),
              "retired": sorted(st.retired), "totals": st.acc}
    if st.pending:
        record["pending"] = st.pending
    _put_atomic(fs, state_path(root, cfg.resolved_run_id()), json.dumps(record, separators=(",", ":")).encode())


def subtract_totals(acc: dict[str, Any], m: dict[str, Any]) -> None:
    neg = {k: (-v if isinstance(v, (int, float)) else {kk: -vv for kk, vv in v.items()}) for k, v in m.items()
           if isinstance(v, (int, float, dict))}
    _add_totals(acc, neg)
    for k in ("errors_by_stage", "parse_modes", "skip_reasons"):
        acc[k] = {kk: vv for kk, vv in acc[k].items() if vv}


def prune_retired(cfg: ScoreConfig, st: ResumeState) -> None:
    """At the start of an invocation, after `remove_uncommitted` and `consolidate`: forget the digests that
    compaction or a retry retired. They only guard against a write task of an earlier invocation being
    retried after its files were rewritten; that invocation is over, its leftover files are deleted and its
    markers folded away, so the set would otherwise grow with every compaction."""
    if st.retired and not st.folded_paths:
        st.retired = set()
        write_checkpoint(cfg, st)


def consolidate(cfg: ScoreConfig, st: ResumeState) -> int:
    """Write the compact checkpoint of `st`, then delete the markers and done shards' manifests it folded.
    Returns the number of objects removed. Safe to kill at any point (see `load_state`)."""
    if not st.folded_paths:
        return 0
    write_checkpoint(cfg, st)
    fs, _root = filesystem(cfg.output.path, cfg.output.storage)
    paths, st.folded_paths = st.folded_paths, []
    if paths:
        try:
            fs.rm(paths)
        except FileNotFoundError:
            for p in paths:
                try:
                    fs.rm(p)
                except FileNotFoundError:
                    pass
    st.new_markers = 0
    return len(paths)


STAGING_DIR = "_vscore/staging"  # a rewrite's new files until its swap is rolled forward (no reader looks here)


def staging_dir(table_root: str, run_id: str) -> str:
    """Where a rewrite stages its new files, per table (output or quarantine): under `_vscore/`, which Spark,
    Trino, Hive and pyarrow skip (a leading `_`), and named `*.parquet.staged`, which a DuckDB glob
    `**/*.parquet` does not match (DuckDB's `**` does enter `_` and `.` folders)."""
    return f"{table_root.rstrip('/')}/{STAGING_DIR}/{run_id}"


def finish_pending(cfg: ScoreConfig, st: ResumeState) -> int:
    """Roll committed rewrites forward (`pipeline.run.rewrite`): delete their old files, then move their staged
    files into place, then drop them from the checkpoint. Idempotent, so a kill at any point is finished by
    the next call; at no point is a row in two files a reader globs (it may be in none for a moment)."""
    if not st.pending:
        return 0
    storage = cfg.output.storage
    for _new, p in sorted(st.pending.items()):
        for url in p.get("old", []):
            fs, path = filesystem(url, storage)
            try:
                fs.rm(path)
            except FileNotFoundError:
                pass
        for staged, final in p.get("moves", []):
            fs, src = filesystem(staged, storage)
            dst = filesystem(final, storage)[1]
            fs.makedirs(dst.rsplit("/", 1)[0], exist_ok=True)
            try:
                fs.mv(src, dst)  # local: one rename; object stores: copy (the object appears whole), then delete
            except FileNotFoundError:  # moved by an earlier, interrupted roll-forward
                fs.invalidate_cache(dst.rsplit("/", 1)[0])
                if not fs.exists(dst):
                    raise RuntimeError(f"staged file {staged} of a committed rewrite is gone and {final} is absent") from None
    n = len(st.pending)
    st.pending = {}
    write_checkpoint(cfg, st)
    return n


def remove_uncommitted(cfg: ScoreConfig, state: ResumeState) -> list[str]:
    """Delete this run's data and quarantine files that no commit marker names (a killed run's leftovers),
    after rolling forward a committed rewrite; then the staged files of rewrites that never committed."""
    removed = []
    run_id = cfg.resolved_run_id()
    finish_pending(cfg, state)
    for url in (cfg.output.path, quarantine_url(cfg.output)):
        fs, root = filesystem(url, cfg.output.storage)
        if "run_id" not in cfg.output.partition_cols:
            log.warning("output is not partitioned by run_id: leftovers of interrupted runs are not cleaned up")
            return removed
        sdir = staging_dir(root, run_id)  # staged files of a rewrite that never committed (pending ones moved above)
        fs.invalidate_cache(sdir)
        staged = fs.find(sdir) if fs.exists(sdir) else []
        if staged:
            fs.rm(staged)
            removed += staged
        base = f"{root.rstrip('/')}/{partition_segment('run_id', run_id)}"
        fs.invalidate_cache(base)  # a cached listing (s3fs) could hide a killed run's files
        if not fs.exists(base):
            continue
        # one partition folder at a time (never the whole listing in memory): O(files) requests, O(folder) memory
        for dirpath, _dirs, names in fs.walk(base):
            if COMMITS_DIR in dirpath or "/_vscore" in dirpath:
                continue
            for name in names:
                if name.startswith("part-") and name.endswith((".parquet", ".parquet.tmp")) and not state.is_committed_file(name):
                    path = f"{dirpath.rstrip('/')}/{name}"
                    fs.rm(path)
                    removed.append(path)
            # s3fs keeps every listing it made (~1.4 KB per object): +228 MB at 160,000 files, measured
            fs.invalidate_cache(dirpath)
    if removed:
        log.info("removed %d uncommitted file(s) left by an interrupted run", len(removed))
    return removed


def write_shard_manifest(manifest_dir: str, storage: Any, shard: str, row_ids: list[str]) -> None:
    fs, root = filesystem(manifest_dir, storage)
    # whole or absent: the driver folds manifests into the checkpoint while read tasks still write them
    path = f"{root}/{shard_manifest_name(shard)}"
    with refused(fs, path):
        _put_atomic(fs, path, json.dumps({"shard": shard, "rows": len(row_ids), "row_ids": row_ids}).encode())
