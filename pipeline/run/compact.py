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

While the run goes on (each state fold) only groups of at least half the target are compacted: the new file
is then no longer small, so every row is rewritten at most once (write amplification <= 2x over the run, where
re-packing a growing small file at every fold would rewrite it ~target / fold-increment times). The end of the
run packs what is left. In a running job the reading and writing happen in a Ray task
(`rewrite._stage_anywhere`); the driver only plans and commits, so its memory does not keep the high-water
mark of the largest group.
"""

from __future__ import annotations

import logging
from typing import Any

from pipeline.config import ScoreConfig
from pipeline.run import resume
from pipeline.run.rewrite import committed_files, rewrite

log = logging.getLogger(__name__)


def plan_groups(sizes: dict[str, tuple[str, int]], target: int, min_group: int = 0) -> list[list[str]]:
    """digest -> (first file path, total bytes) => groups of small digests of about `target` bytes, each of
    at least `min_group` bytes."""
    small = sorted((path, d, size) for d, (path, size) in sizes.items() if size < target // 2)
    groups: list[tuple[list[str], int]] = []
    cur: list[str] = []
    acc = 0
    for _path, d, size in small:
        if cur and acc + size > target:
            groups.append((cur, acc))
            cur, acc = [], 0
        cur.append(d)
        acc += size
    if cur:
        groups.append((cur, acc))
    return [g for g, total in groups if len(g) > 1 and total >= min_group]


def compact(cfg: ScoreConfig, st: resume.ResumeState | None = None, target_bytes: int | None = None,
            final: bool = True, in_ray: bool = False) -> dict[str, Any]:
    """Compact this run's small committed files. `st`: a freshly loaded and consolidated state (loaded here
    when None). `final=False` (the folds while a run goes on): only groups of at least half the target, so a
    file is rewritten at most once (a new file of >= target/2 is no longer small) and never again as the run
    grows; the end of the run (`final`) packs what is left. `in_ray`: the files are read and written in a Ray
    task, not in this process (`rewrite._stage_anywhere`). Returns counts of digests replaced and new files."""
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
    groups = plan_groups(sizes, target, min_group=0 if final else target // 2)
    replaced = new = 0
    for g in groups:
        if rewrite(cfg, st, files, g, tag="compact", in_ray=in_ray) is not None:
            new += 1
        replaced += len(g)
    if groups:
        log.info("compaction: %d write tasks' files -> %d", replaced, new)
    return {"replaced": replaced, "new": new}
