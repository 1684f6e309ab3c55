"""Compaction (`output.target_file_mb`): the small committed files of a run are rewritten, per partition
folder, into files near the target size, atomically (`pipeline.run.rewrite`: new files staged where readers
do not look, one checkpoint swap, old files deleted, staged files moved into place; a kill at any point loses
and duplicates nothing, the next start rolls a committed swap forward and removes an uncommitted one, and a
reader globbing the output never sees a row twice).

Write tasks are the unit (a task's rows may span partitions: all of its files move together). Tasks whose
files are all under half the target are packed, in partition order, into groups of about the target; each
group of two or more tasks becomes one new file per partition folder it touches. The replaced digests are
recorded as retired in the checkpoint, so a write task that Ray retries after its files were compacted
(same digest) is recognised and never counted twice.
"""

from __future__ import annotations

import logging
from typing import Any

from pipeline.config import ScoreConfig
from pipeline.run import resume
from pipeline.run.rewrite import committed_files, rewrite

log = logging.getLogger(__name__)


def plan_groups(sizes: dict[str, tuple[str, int]], target: int) -> list[list[str]]:
    """digest -> (first file path, total bytes) => groups of small digests of about `target` bytes."""
    small = sorted((path, d, size) for d, (path, size) in sizes.items() if size < target // 2)
    groups: list[list[str]] = []
    cur: list[str] = []
    acc = 0
    for _path, d, size in small:
        if cur and acc + size > target:
            groups.append(cur)
            cur, acc = [], 0
        cur.append(d)
        acc += size
    if cur:
        groups.append(cur)
    return [g for g in groups if len(g) > 1]


def compact(cfg: ScoreConfig, st: resume.ResumeState | None = None, target_bytes: int | None = None) -> dict[str, Any]:
    """Compact this run's small committed files. `st`: a freshly loaded and consolidated state (loaded here
    when None). Returns counts of digests replaced and new files."""
    target = target_bytes or int(cfg.output.target_file_mb * 2**20)
    if st is None:
        st = resume.load_state(cfg)
        resume.consolidate(cfg, st)
    resume.finish_pending(cfg, st)  # a swap an earlier fold committed but did not roll forward (it failed)
    files = committed_files(cfg, st)
    out_root = cfg.output.path.rstrip("/").split("://", 1)[-1]
    sizes: dict[str, tuple[str, int]] = {}
    for d, entries in files.items():
        out = [(p, s) for _fs, p, s in entries if p.split("://", 1)[-1].startswith(out_root + "/")]
        if out:
            sizes[d] = (min(p for p, _ in out), sum(s for _, s in out))
    groups = plan_groups(sizes, target)
    replaced = new = 0
    for g in groups:
        if rewrite(cfg, st, files, g, tag="compact") is not None:
            new += 1
        replaced += len(g)
    if groups:
        log.info("compaction: %d write tasks' files -> %d", replaced, new)
    return {"replaced": replaced, "new": new}
