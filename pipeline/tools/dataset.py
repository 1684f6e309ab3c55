"""Opening a scores dataset, for every tool that reads one (report, filter, eval, best-of-n, reparse).

`open_scores(url, need=..., run_id=...)` is the one place that decides whether a path is a usable scores
dataset and says why not, as one line (`ScoresDatasetError`, which `vscore` prints and exits 2 on):

* the path exists, and is one Parquet file or a folder of them;
* in a folder, only ``*.parquet`` files count, in hive partition folders (``run_id=R/shard_group=G/``):
  hidden entries (``_vscore/`` commit markers and summaries, ``_SUCCESS``, ``.crc``) and other files
  (``*.parquet.tmp`` leftovers of an interrupted write, READMEs) are never opened;
* a folder whose Parquet files all sit under an ordinary subfolder (a demo's root holds ``tiny-model/``
  beside ``scores/``) is the parent of a dataset: the message names the subfolder to use;
* the schema has the columns the tool needs (names as in pipeline/schema.py OUTPUT_SCHEMA);
* ``run_id``, when given, is one of the dataset's runs (from the partition folders when ``run_id`` is a
  partition column, else from the column);
* there is at least one row (of that run).

Partition columns are typed as in OUTPUT_SCHEMA (strings), never inferred: ``run_id=123`` stays "123".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from pyarrow.fs import FSSpecHandler, PyFileSystem

from pipeline.config import StorageOptions
from pipeline.errors import ScoresDatasetError
from pipeline.schema import OUTPUT_SCHEMA, one_line
from pipeline.storage import filesystem

log = logging.getLogger(__name__)

PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")
HIDDEN_PREFIXES = ("_", ".")  # skipped, as pyarrow's and DuckDB's discovery skip them
BASE_COLUMNS = ("row_id", "status")  # every scores dataset has these (non-nullable in OUTPUT_SCHEMA)
_LISTED = 8  # names quoted in a message


@dataclass
class ScoresDataset:
    url: str
    dataset: pads.Dataset
    partitions: list[str]  # hive partition columns, outermost first ([] for one file or a flat folder)
    files: list[str] = field(default_factory=list)  # data files (filesystem paths)
    root: str = ""  # filesystem path of the dataset root ("" for one file)

    def runs(self) -> list[str]:
        """The distinct run ids, sorted ([] without a run_id column)."""
        if "run_id" in self.partitions:
            found = set()
            for f in self.files:
                for seg in _rel(f, self.root).split("/")[:-1]:
                    if seg.startswith("run_id=") and seg != "run_id=__HIVE_DEFAULT_PARTITION__":  # (a null)
                        found.add(unquote(seg[len("run_id="):]))
            return sorted(found)
        if "run_id" not in self.dataset.schema.names:
            return []
        found = set()
        for batch in self.dataset.to_batches(columns=["run_id"]):
            found.update(v for v in pc.unique(batch.column(0)).to_pylist() if v is not None)
        return sorted(str(v) for v in found)

    def run_filter(self, run_id: str | None) -> pc.Expression | None:
        return None if run_id is None else pc.field("run_id") == run_id


def _rel(path: str, root: str) -> str:
    prefix = root.rstrip("/") + "/"
    return path[len(prefix):] if path.startswith(prefix) else path


def _names(items, limit: int = _LISTED) -> str:
    items = list(items)
    return ", ".join(items[:limit]) + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def _join(url: str, rel: str) -> str:
    return url.rstrip("/") + "/" + rel


def _suggest(url: str, nested: dict[str, str], fs) -> str:
    """'did you mean URL/sub?' for the subfolders holding Parquet datasets, those that look like scores
    datasets (their first file has the base columns) first and alone when there are any."""
    cands = sorted(nested, key=lambda s: (s.count("/"), s))
    scores = []
    for c in cands[:_LISTED]:
        try:
            with fs.open(nested[c], "rb") as f:
                names = pq.read_schema(f).names
        except (OSError, pa.ArrowException):
            continue
        if all(b in names for b in BASE_COLUMNS):
            scores.append(c)
    cands = scores or cands
    if len(cands) == 1:
        return f"did you mean {_join(url, cands[0])}?"
    return f"did you mean one of {_names(_join(url, c) for c in cands)}?"


def open_scores(url: str, storage: StorageOptions | None = None, need: tuple[str, ...] | list[str] = BASE_COLUMNS,
                run_id: str | None = None, check_rows: bool = True) -> ScoresDataset:
    """Open `url` as a scores dataset, checked as the module docstring says; raises ScoresDatasetError."""
    fs, path = filesystem(url, storage or StorageOptions())
    pa_fs = PyFileSystem(FSSpecHandler(fs))
    if not fs.exists(path):
        raise ScoresDatasetError(f"no scores dataset at {url}: the path does not exist")
    nested: dict[str, str] = {}  # subfolder holding a dataset of its own -> its first Parquet file
    if fs.isfile(path):
        try:
            dset = pads.dataset(path, format="parquet", filesystem=pa_fs)
        except pa.ArrowInvalid:
            raise ScoresDatasetError(f"{url} is not a scores dataset: expected a Parquet file or a folder of them, "
                                     "found a file that is not Parquet") from None
        sd = ScoresDataset(url, dset, [], [path], "")
    else:
        sd = _open_folder(url, fs, path, pa_fs, nested)
    names = sd.dataset.schema.names
    missing = [c for c in dict.fromkeys([*BASE_COLUMNS, *need]) if c not in names]
    if missing:
        hint = f"; {_suggest(url, nested, fs)}" if nested else ""
        if any(c in names for c in BASE_COLUMNS) and len(set(names) & set(OUTPUT_SCHEMA.names)) > len(names) // 2:
            raise ScoresDatasetError(f"the scores at {url} lack the column(s) {_names(missing)} this command needs{hint}")
        raise ScoresDatasetError(f"{url} is not a vscore scores dataset: a Parquet dataset of another schema, without "
                                 f"{_names(missing)} (its columns: {_names(names)}){hint}")
    if run_id is not None:
        if "run_id" not in names:
            raise ScoresDatasetError(f"--run-id {run_id}: the scores at {url} have no run_id column")
        runs = sd.runs()
        if run_id not in runs:
            raise ScoresDatasetError(f"run {run_id!r} is not in {url} (its runs: {_names(runs) or 'none'})")
    if check_rows:
        filt = sd.run_filter(run_id)
        if not sd.dataset.head(1, columns=[], filter=filt).num_rows:  # stops at the first row
            what = f"run {run_id!r} of {url}" if run_id is not None else f"the scores dataset at {url}"
            raise ScoresDatasetError(f"{what} holds no rows")
    return sd


def _committed_digests(fs, root: str, run_id: str) -> set[str] | None:
    """The write-task digests of `run_id` that are committed now (checkpoint + markers not folded yet, less
    the digests compaction or a retry retired), or None where the output holds no state for the run."""
    import json

    from pipeline.run.resume import state_path
    from pipeline.stages.sink import commit_dir

    ck = None
    try:
        ck = json.loads(fs.cat(state_path(root, run_id)))
    except (FileNotFoundError, ValueError):
        pass
    cdir = commit_dir(root, run_id)
    markers = [p.rsplit("/", 1)[-1][:-5] for p in fs.ls(cdir, detail=False) if p.endswith(".json")] if fs.exists(cdir) else []
    if ck is None and not markers:
        return None
    ck = ck or {}
    return (set(ck.get("digests", ())) | set(markers)) - set(ck.get("retired", ()))


def _committed_only(fs, root: str, data: list[str]) -> list[str]:
    """Leave out the files of a vscore run that its state does not commit: an interrupted write's leftovers,
    a compaction's or retry's new files before its swap and its old files after it, so a reader through
    this opener never sees a row twice (files of runs without state are kept as they are)."""
    by_run: dict[str, list[str]] = {}
    for f in data:
        seg = next((s for s in _rel(f, root).split("/")[:-1] if s.startswith("run_id=")), None)
        by_run.setdefault(unquote(seg[len("run_id="):]) if seg else "", []).append(f)
    keep: list[str] = []
    for run_id, files in by_run.items():
        allowed = _committed_digests(fs, root, run_id) if run_id else None
        if allowed is None:
            keep += files
            continue
        for f in files:
            name = f.rsplit("/", 1)[-1]
            if not (name.startswith("part-") and name.endswith(".parquet")) or name[5:-8] in allowed:
                keep.append(f)
    return keep or data


def _open_folder(url: str, fs, path: str, pa_fs, nested: dict[str, str]) -> ScoresDataset:
    root = path.rstrip("/")
    data: list[str] = []
    others: list[str] = []
    for f in sorted(fs.find(root)):
        rel = _rel(f, root)
        segs = rel.split("/")
        if any(s.startswith(HIDDEN_PREFIXES) for s in segs):
            continue
        if not segs[-1].lower().endswith(PARQUET_SUFFIXES):
            others.append(rel)
            continue
        dirs = segs[:-1]
        first_plain = next((i for i, s in enumerate(dirs) if "=" not in s), None)
        if first_plain is None:
            data.append(f)
        else:  # under an ordinary folder: a dataset of its own, rooted before its first hive segment
            k = next((i for i, s in enumerate(dirs) if "=" in s), len(dirs))
            nested.setdefault("/".join(dirs[:max(k, first_plain + 1)]), f)
    if not data:
        if nested:
            raise ScoresDatasetError(f"no scores dataset at {url}: its Parquet files are in a subfolder; "
                                     f"{_suggest(url, nested, fs)}")
        if others:
            raise ScoresDatasetError(f"no scores dataset at {url}: no Parquet files there, only other files "
                                     f"({_names(others, 4)})")
        raise ScoresDatasetError(f"no scores dataset at {url}: the folder is empty")
    if nested:
        log.warning("%s: ignoring Parquet files under %s (not hive partition folders)", url, _names(sorted(nested)))
    data = _committed_only(fs, root, data)
    layouts = {tuple(s.split("=", 1)[0] for s in _rel(f, root).split("/")[:-1]) for f in data}
    if len(layouts) > 1:
        raise ScoresDatasetError(f"{url} mixes partition layouts ({_names('/'.join(x) or '(none)' for x in sorted(layouts))}); "
                                 "expected one, as `vscore score` writes")
    parts = list(layouts.pop())
    partitioning = None
    if parts:
        fields = [pa.field(n, OUTPUT_SCHEMA.field(n).type if n in OUTPUT_SCHEMA.names else pa.string()) for n in parts]
        partitioning = pads.partitioning(pa.schema(fields), flavor="hive")
    try:
        dset = pads.dataset(data, format="parquet", filesystem=pa_fs, partitioning=partitioning,
                            partition_base_dir=root)
    except pa.ArrowInvalid as e:
        raise ScoresDatasetError(f"{url} is not a readable Parquet dataset ({one_line(str(e), 200)})") from None
    return ScoresDataset(url, dset, parts, data, root)
