"""The VideoScore2 paper's evaluation metrics over a vscore scores dataset and a human-label file.

Follows the official scripts (``eval/get_acc_corr.py`` @c784048d, ``eval/get_pairwise_acc.py`` @0e12a759;
../shared/docs/videoscore2.md section 7b), without the leftover debug block of ``get_corr`` that replaces
the model scores by ``random.choice([1..5])`` before the correlations. See docs/eval.md for the formulas.

Point benchmarks (one label row per video, keyed by ``key``), per dimension d over the n items kept:

* model score x (soft by default), label g;  r = ``int(min(5, max(1, round(x))))`` with Python's
  ``round`` (round half to even: 2.5 -> 2, 3.5 -> 4, 0.5 -> 0 -> 1), as the official code;
* ``acc`` = 100 * #(r == g) / n;  ``relaxed_acc`` = 100 * #(|r - g| <= 1) / n;
* ``plcc`` = 100 * Pearson(x, g), ``srcc`` = 100 * Spearman(x, g) (Pearson of average ranks) on the raw
  floats; None (JSON null) when undefined (n < 2 or a constant side);
* ``avg`` = the mean of each metric over the benchmark's dimensions (None if one of them is None).

Pairwise benchmarks (``key_a``, ``key_b``, label in A/B/same): predicted A when s_a - s_b > band, B when
s_a - s_b < -band, else "same" (with ties; band 0.001 for soft scores, 0.5 for hard integers, like the
official ``vs2_float`` and ``vs2`` methods); without ties, GT "same" pairs are skipped and the prediction
is A if s_a > s_b, B if s_a < s_b, "same" (always wrong) on exact equality. acc = 100 * correct / n.

An item (or a pair with such an item) counts as missing when its key is absent from the scores, its
row is an error row or was skipped by the prefilter (its own reason), or a needed score is null; missing items are reported (``missing``,
``missing_by_reason``, ``missing_keys``), never silently dropped. The official scripts drop them too.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from pipeline.config import StorageOptions
from pipeline.errors import UsageError
from pipeline.vs2.parse import DIMENSIONS
from pipeline.storage import filesystem

BENCHMARKS = ("generic", "mjbench", "videophy2", "videogen-rewardbench", "t2vqa")
USES = ("soft", "hard", "expected")
COMPARES = ("v", "t", "p", "sum", "mean")
METRICS = ("acc", "relaxed_acc", "plcc", "srcc")
DEFAULT_TIE_BAND = {"soft": 0.001, "expected": 0.001, "hard": 0.5}
SHORT = {"v": "visual_quality", "t": "text_alignment", "p": "physical_consistency"}

# label-column aliases (matched exactly first, then case-insensitively)
KEY_ALIASES = ["key", "video_name", "video_id", "video", "name", "id"]
PATH_KEY_ALIASES = ["video_path", "videopath", "path", "filepath"]  # basename without extension -> key
POINT_ALIASES = {
    "visual_quality": ["visual_quality", "visual_score", "v_score_gt", "vq", "v", "visual", "fineness"],
    "text_alignment": ["text_alignment", "t2v_score", "t_score_gt", "ta", "t", "alignment", "sa"],
    "physical_consistency": ["physical_consistency", "phy_score", "p_score_gt", "pc", "p", "physics",
                             "consistency", "coherence"],
    "overall": ["overall", "overall_score", "total_score", "quality_score", "mos"],
}
PAIR_KEY_ALIASES = [("key_a", "key_b"), ("video_a", "video_b"), ("video1", "video2"), ("left_video", "right_video")]
PAIR_PATH_ALIASES = [("path_a", "path_b"), ("video_0_path", "video_1_path"), ("video1_path", "video2_path")]

PREF_A = {"a", "1", "video 1 better", "video1", "video_1", "left", "leftvote", "first"}
PREF_B = {"b", "2", "video 2 better", "video2", "video_2", "right", "rightvote", "second"}
PREF_SAME = {"same", "tie", "tievote", "bothbad_vote", "bothbad", "equal", "="}


# --------------------------------------------------------------------------- primitives

def round_clamp(x: float) -> int:
    """Official rounding for accuracy: ``int(min(5, max(1, round(x))))`` (Python round: half to even)."""
    return int(min(5, max(1, round(x))))


def mj_remap_v(s: int) -> int:
    """MJ-Bench-Video remap of visual quality (fineness): (1,2)->0, (3,4)->1, 5->2."""
    return 0 if s in (1, 2) else 1 if s in (3, 4) else 2


def mj_remap_tp(s: int) -> int:
    """MJ-Bench-Video remap of alignment, consistency and overall: 1->0, (2,3)->1, (4,5)->2."""
    return 0 if s == 1 else 1 if s in (2, 3) else 2


def pearson(x: Iterable[float], y: Iterable[float]) -> float | None:
    """Pearson's r = sum(dx*dy) / sqrt(sum(dx^2) * sum(dy^2)); None if n < 2 or a side is constant."""
    xa, ya = np.asarray(list(x), dtype=np.float64), np.asarray(list(y), dtype=np.float64)
    if xa.shape != ya.shape or xa.size < 2:
        return None
    dx, dy = xa - xa.mean(), ya - ya.mean()
    sxx, syy = float(dx @ dx), float(dy @ dy)
    if sxx == 0.0 or syy == 0.0:
        return None
    return max(-1.0, min(1.0, float(dx @ dy) / math.sqrt(sxx * syy)))


def average_ranks(x: Iterable[float]) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their positions (scipy.stats.rankdata 'average')."""
    a = np.asarray(list(x), dtype=np.float64)
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(a.size, dtype=np.float64)
    s = a[order]
    i = 0
    while i < a.size:
        j = i
        while j + 1 < a.size and s[j + 1] == s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(x: Iterable[float], y: Iterable[float]) -> float | None:
    """Spearman's rho = Pearson of average ranks; None when undefined."""
    xl, yl = list(x), list(y)
    if len(xl) != len(yl) or len(xl) < 2:
        return None
    return pearson(average_ranks(xl), average_ranks(yl))


def judge(s_a: float, s_b: float, ties: bool, band: float) -> str:
    """Predicted preference, exactly ``judge_equal_for_diverse``: with ties, A if s_a - s_b > band,
    B if s_a - s_b < -band, else "same"; without ties, a plain comparison ("same" on equality)."""
    if not ties:
        return "A" if s_a > s_b else "B" if s_a < s_b else "same"
    d = s_a - s_b
    return "A" if d > band else "B" if d < -band else "same"


def normalise_preference(value: Any) -> str | None:
    """A pair label as "A" (first video better), "B" or "same"; None when empty. Accepts A/B/same,
    1/2/same (T2VQA-DB), "Video 1 better"/"Video 2 better"/"Same" (MJ-Bench-Video), left/right/tie votes."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool):
        raise UsageError(f"unrecognised preference label {value!r}")
    if isinstance(value, (int, float)) and float(value).is_integer():
        value = str(int(value))
    v = str(value).strip().lower()
    if not v:
        return None
    if v in PREF_A:
        return "A"
    if v in PREF_B:
        return "B"
    if v in PREF_SAME:
        return "same"
    raise UsageError(f"unrecognised preference label {value!r} (expected A/B/same, 1/2/same or "
                     "'Video 1 better'/'Video 2 better'/'Same')")


def _pct(num: int, den: int) -> float | None:
    return 100.0 * num / den if den else None


def _x100(v: float | None) -> float | None:
    return None if v is None else 100.0 * v


def _num(v: Any) -> float | None:
    """A label value as a float; None for null, empty or NaN."""
    if v is None or isinstance(v, bool):
        return None
    if isinstance(v, str):
        v = v.strip()
        if not v or v.lower() in ("nan", "null", "none", "na"):
            return None
    f = float(v)
    return None if math.isnan(f) else f


def _path_key(v: Any) -> str | None:
    """The key of a video path as the official loaders derive it: basename without its extension."""
    if v is None:
        return None
    base = str(v).replace("\\", "/").rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[0] if "." in base else base


def _key(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    s = str(v).strip()
    return s or None


# --------------------------------------------------------------------------- label files

LABEL_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet", ".pq")


def read_records(url: str, storage: StorageOptions | None = None) -> list[dict[str, Any]]:
    """Rows of a label file: JSONL (.jsonl/.ndjson), JSON (a list of objects), CSV/TSV or Parquet."""
    fs, path = filesystem(url, storage or StorageOptions())
    low = path.lower()
    if not fs.exists(path):
        raise UsageError(f"no labels file at {url}: the path does not exist")
    if fs.isdir(path):
        raise UsageError(f"{url} is a folder; expected a labels file ({', '.join(LABEL_SUFFIXES)})")
    if low.endswith((".parquet", ".pq")):
        import pyarrow as pa
        import pyarrow.parquet as pq

        with fs.open(path, "rb") as f:
            try:
                return pq.read_table(f).to_pylist()
            except pa.ArrowInvalid as e:
                raise UsageError(f"labels {url}: not a Parquet file ({e})") from None
    with fs.open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8-sig")
        if low.endswith((".csv", ".tsv")):
            reader = csv.DictReader(io.StringIO(text), delimiter="\t" if low.endswith(".tsv") else ",")
            return [{k: (None if v == "" else v) for k, v in row.items()} for row in reader]
        if low.endswith(".json"):
            data = json.loads(text)
            if isinstance(data, dict):  # {"key": {...}} -> rows with a key column
                return [{"key": k, **v} for k, v in data.items()]
            rows = list(data)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except (UnicodeDecodeError, ValueError, TypeError, csv.Error) as e:
        kind = "CSV" if low.endswith((".csv", ".tsv")) else "JSON" if low.endswith(".json") else "JSON lines"
        raise UsageError(f"labels {url}: not valid {kind} ({e})") from None
    if not all(isinstance(r, dict) for r in rows):
        raise UsageError(f"labels {url}: expected one JSON object per label")
    if not rows:
        raise UsageError(f"labels {url}: the file holds no labels")
    return rows


def parse_label_columns(spec: str | None) -> dict[str, str]:
    """``"visual_quality=VQ,overall=total_score,key=video_name"`` -> mapping (v/t/p accepted for dims)."""
    out: dict[str, str] = {}
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise UsageError(f"--label-columns entries are NAME=COLUMN, got {part!r}")
        name, col = (s.strip() for s in part.split("=", 1))
        out[SHORT.get(name, name)] = col
    return out


def _columns(records: list[dict[str, Any]]) -> list[str]:
    cols: dict[str, None] = {}
    for r in records:
        cols.update(dict.fromkeys(r))
    return list(cols)


def _find(columns: list[str], aliases: list[str]) -> str | None:
    for a in aliases:
        if a in columns:
            return a
    low = {c.lower(): c for c in columns}
    for a in aliases:
        if a.lower() in low:
            return low[a.lower()]
    return None


# --------------------------------------------------------------------------- scores

@dataclass
class ScoreIndex:
    """Scores by key: (v, t, p) of the chosen kind (soft/hard/expected) and the row status."""

    use: str
    rows: dict[str, tuple[str, tuple[float | None, float | None, float | None]]] = field(default_factory=dict)

    def lookup(self, key: str | None, dims: tuple[str, ...] = DIMENSIONS) -> tuple[dict[str, float] | None, str | None]:
        """(scores of `dims`, None) or (None, reason) with reason absent / error / skipped (the prefilter
        kept it from the judge) / null_score."""
        if key is None or key not in self.rows:
            return None, "absent"
        status, vals = self.rows[key]
        if status != "ok":
            return None, "skipped" if status == "skipped" else "error"
        got = dict(zip(DIMENSIONS, vals))
        if any(got[d] is None for d in dims):
            return None, "null_score"
        return {d: float(got[d]) for d in dims}, None


def score_columns(use: str) -> tuple[str, str, str]:
    if use not in USES:
        raise UsageError(f"--use must be one of {USES}")
    suffix = {"hard": "", "soft": "_soft", "expected": "_expected"}[use]
    return tuple(d + suffix for d in DIMENSIONS)  # type: ignore[return-value]


def load_scores(url: str, use: str = "soft", storage: StorageOptions | None = None, key_column: str = "key",
                run_id: str | None = None) -> ScoreIndex:
    """Read only the needed columns of a scores dataset (hive directory or Parquet file)."""
    from pipeline.tools.dataset import open_scores

    cols = score_columns(use)
    need = [key_column, "status", *cols]
    sd = open_scores(url, storage, need=need, run_id=run_id)
    dset, filt = sd.dataset, sd.run_filter(run_id)
    index = ScoreIndex(use=use)
    dups: list[str] = []
    for batch in dset.to_batches(columns=need, filter=filt):
        d = batch.to_pydict()
        for i, k in enumerate(d[key_column]):
            k = _key(k)
            if k is None:
                continue
            if k in index.rows:
                dups.append(k)
            index.rows[k] = (d["status"][i], tuple(d[c][i] for c in cols))  # type: ignore[assignment]
    if dups:
        raise UsageError(f"{len(dups)} duplicate {key_column!r} values in the scores (e.g. {sorted(set(dups))[:5]}); "
                         "select one run with --run-id or use a unique --score-key")
    return index


# --------------------------------------------------------------------------- point benchmarks

def _point_dims(benchmark: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(dimensions reported, dimensions a video needs non-null)."""
    if benchmark == "videophy2":
        return ("text_alignment", "physical_consistency"), ("text_alignment", "physical_consistency")
    if benchmark == "t2vqa":
        return (), DIMENSIONS
    return DIMENSIONS, DIMENSIONS


def _dim_metrics(preds: list[float], gts: list[float], remap: Callable[[int], int] | None) -> dict[str, Any]:
    r = [round_clamp(x) for x in preds]
    if remap is not None:
        r = [remap(s) for s in r]
    n = len(gts)
    return {"acc": _pct(sum(a == g for a, g in zip(r, gts)), n),
            "relaxed_acc": _pct(sum(abs(a - g) <= 1 for a, g in zip(r, gts)), n),
            "plcc": _x100(pearson(preds, gts)), "srcc": _x100(spearman(preds, gts)), "n": n}


def _avg(per_dim: list[dict[str, Any]]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for m in METRICS:
        vals = [d[m] for d in per_dim]
        out[m] = None if not vals or any(v is None for v in vals) else sum(vals) / len(vals)
    return out


def evaluate_point(labels: list[dict[str, Any]], scores: ScoreIndex, benchmark: str = "generic",
                   label_columns: dict[str, str] | None = None, max_listed: int = 20) -> dict[str, Any]:
    if benchmark not in ("generic", "mjbench", "videophy2", "t2vqa"):
        raise UsageError(f"benchmark {benchmark!r} has no point-score protocol")
    mapping = dict(label_columns or {})
    cols = _columns(labels)
    key_col = mapping.get("key") or _find(cols, KEY_ALIASES)
    key_fn = _key
    if key_col is None:
        key_col = _find(cols, PATH_KEY_ALIASES)
        key_fn = _path_key
    if key_col is None:
        raise UsageError(f"labels have no key column (looked for {KEY_ALIASES + PATH_KEY_ALIASES}; use --label-columns key=COL)")
    dims, needed = _point_dims(benchmark)
    gt_col = {}
    for d in dims:
        c = mapping.get(d) or _find(cols, POINT_ALIASES[d])
        if c is not None:
            gt_col[d] = c
    overall_col = None
    if benchmark in ("mjbench", "t2vqa"):
        overall_col = mapping.get("overall") or _find(cols, POINT_ALIASES["overall"])
        if benchmark == "t2vqa" and overall_col is None:
            raise UsageError("t2vqa point evaluation needs an overall label column (quality_score/overall)")
    if benchmark in ("mjbench", "videophy2") and set(gt_col) != set(dims):
        raise UsageError(f"{benchmark} needs label columns for {list(dims)}; found {gt_col}")
    if not gt_col and overall_col is None:
        raise UsageError(f"no label columns found for {list(dims)} (use --label-columns)")

    preds = {d: [] for d in gt_col}
    gts = {d: [] for d in gt_col}
    ov_int, ov_raw, ov_gt = [], [], []
    reasons: Counter = Counter()
    missing_keys: list[str] = []
    label_missing: Counter = Counter()
    n_items = 0
    seen: set[str] = set()
    for row in labels:
        key = key_fn(row.get(key_col))
        if key is not None and key in seen:
            raise UsageError(f"duplicate key {key!r} in the labels")
        if key is not None:
            seen.add(key)
        got, reason = scores.lookup(key, needed)
        if got is None:
            reasons[reason] += 1
            if len(missing_keys) < max_listed:
                missing_keys.append(str(key))
            continue
        n_items += 1
        for d, c in gt_col.items():
            g = _num(row.get(c))
            if g is None:
                label_missing[d] += 1
                continue
            preds[d].append(got[d])
            gts[d].append(g)
        if overall_col is not None:
            g = _num(row.get(overall_col))
            if g is None:
                label_missing["overall"] += 1
            else:
                v, t, p = (got[d] for d in DIMENSIONS)
                ov_raw.append(v + t + p)  # official get_corr: v+t+p on the raw scores
                ov_int.append(int((round_clamp(v) + round_clamp(t) + round_clamp(p)) / 3))  # official get_acc
                ov_gt.append(g)

    out: dict[str, Any] = {"kind": "point", "benchmark": benchmark, "use": scores.use, "unit": "percent"}
    per_dim = []
    for d in gt_col:
        remap = (mj_remap_v if d == "visual_quality" else mj_remap_tp) if benchmark == "mjbench" else None
        out[d] = _dim_metrics(preds[d], gts[d], remap)
        per_dim.append(out[d])
    if overall_col is not None:
        if benchmark == "mjbench":
            m = _dim_metrics([float(x) for x in ov_int], ov_gt, mj_remap_tp)
            m["plcc"], m["srcc"] = _x100(pearson(ov_raw, ov_gt)), _x100(spearman(ov_raw, ov_gt))
        else:  # t2vqa: GT on another scale, correlations only
            m = {"acc": None, "relaxed_acc": None, "plcc": _x100(pearson(ov_raw, ov_gt)),
                 "srcc": _x100(spearman(ov_raw, ov_gt)), "n": len(ov_gt)}
        out["overall"] = m
    out["avg"] = _avg(per_dim)
    out.update(labels=len(labels), n=n_items, missing=sum(reasons.values()), missing_by_reason=dict(reasons),
               missing_keys=missing_keys, label_missing=dict(label_missing))
    return out


# --------------------------------------------------------------------------- pairwise benchmarks

def _agg(kind: str) -> Callable[[dict[str, float]], float]:
    if kind == "sum":
        return lambda s: s["visual_quality"] + s["text_alignment"] + s["physical_consistency"]
    if kind == "mean":
        return lambda s: (s["visual_quality"] + s["text_alignment"] + s["physical_consistency"]) / 3
    if kind in SHORT:
        d = SHORT[kind]
        return lambda s: s[d]
    raise UsageError(f"--compare must be one of {COMPARES}")


def _pair_specs(benchmark: str, compare: str | None) -> list[tuple[str, list[str], str]]:
    """(metric name, label-column aliases, score used) per reported comparison."""
    if benchmark == "videogen-rewardbench":
        return [("visual_quality", ["VQ", "visual_quality"], "v"), ("text_alignment", ["TA", "text_alignment"], "t"),
                ("overall", ["Overall", "label"], compare or "sum")]
    if benchmark == "t2vqa":
        return [("overall", ["preference", "label", "overall"], compare or "mean")]
    if benchmark == "mjbench":
        return [("overall", ["overall_preference", "label", "overall"], compare or "mean")]
    if benchmark == "generic":
        return [("visual_quality", ["visual_quality", "vq"], "v"), ("text_alignment", ["text_alignment", "ta"], "t"),
                ("physical_consistency", ["physical_consistency", "pc"], "p"),
                ("overall", ["label", "overall", "preference"], compare or "mean")]
    raise UsageError(f"benchmark {benchmark!r} has no pairwise protocol")


def evaluate_pairwise(pairs: list[dict[str, Any]], scores: ScoreIndex, benchmark: str = "generic", ties: bool = True,
                      tie_band: float | None = None, compare: str | None = None,
                      label_columns: dict[str, str] | None = None, max_listed: int = 20) -> dict[str, Any]:
    band = DEFAULT_TIE_BAND[scores.use] if tie_band is None else float(tie_band)
    mapping = dict(label_columns or {})
    cols = _columns(pairs)
    ka, kb = mapping.get("key_a"), mapping.get("key_b")
    key_fn = _key
    if ka is None or kb is None:
        found = next(((a, b) for a, b in PAIR_KEY_ALIASES if _find(cols, [a]) and _find(cols, [b])), None)
        if found is None:
            found = next(((a, b) for a, b in PAIR_PATH_ALIASES if _find(cols, [a]) and _find(cols, [b])), None)
            key_fn = _path_key
        if found is None:
            raise UsageError("pair labels need key_a and key_b columns (or use --label-columns key_a=COL,key_b=COL)")
        ka, kb = _find(cols, [found[0]]), _find(cols, [found[1]])
    specs = []
    for name, aliases, how in _pair_specs(benchmark, compare):
        col = mapping.get(name) or _find(cols, aliases)
        if col is not None:
            specs.append((name, col, _agg(how), how))
    if not specs:
        raise UsageError(f"no preference label column found for {benchmark} (use --label-columns overall=COL)")

    res = {name: Counter() for name, *_ in specs}
    reasons: Counter = Counter()
    missing_keys: list[str] = []
    missing_pairs = 0
    for row in pairs:
        a, b = key_fn(row.get(ka)), key_fn(row.get(kb))
        sa, ra = scores.lookup(a)
        sb, rb = scores.lookup(b)
        if sa is None or sb is None:
            missing_pairs += 1
            for k, r in ((a, ra), (b, rb)):
                if r is not None:
                    reasons[r] += 1
                    if len(missing_keys) < max_listed and str(k) not in missing_keys:
                        missing_keys.append(str(k))
            continue
        for name, col, fn, _ in specs:
            c = res[name]
            gt = normalise_preference(row.get(col))
            if gt is None:
                c["label_missing"] += 1
                continue
            if not ties and gt == "same":
                c["skipped_same"] += 1
                continue
            c["n"] += 1
            if judge(fn(sa), fn(sb), ties, band) == gt:
                c["correct"] += 1
    out: dict[str, Any] = {"kind": "pairwise", "benchmark": benchmark, "use": scores.use, "unit": "percent",
                           "ties": ties, "tie_band": band if ties else None}
    for name, _col, _fn, how in specs:
        c = res[name]
        out[name] = {"acc": _pct(c["correct"], c["n"]), "n": c["n"], "correct": c["correct"], "score": how,
                     "skipped_same": c["skipped_same"], "label_missing": c["label_missing"]}
    out.update(pairs=len(pairs), n=len(pairs) - missing_pairs, missing=missing_pairs,
               missing_by_reason=dict(reasons), missing_keys=missing_keys)
    return out


# --------------------------------------------------------------------------- entry point

def evaluate(scores_url: str, labels_url: str, kind: str = "auto", benchmark: str = "generic", use: str = "soft",
             ties: bool = True, tie_band: float | None = None, compare: str | None = None,
             label_columns: dict[str, str] | None = None, score_key: str = "key", run_id: str | None = None,
             storage: StorageOptions | None = None) -> dict[str, Any]:
    if benchmark not in BENCHMARKS:
        raise UsageError(f"--benchmark must be one of {BENCHMARKS}")
    labels = read_records(labels_url, storage)
    if kind == "auto":
        if benchmark in ("videogen-rewardbench", "t2vqa"):
            kind = "pairwise"
        elif benchmark in ("mjbench", "videophy2"):
            kind = "point"
        else:
            cols = {c.lower() for c in _columns(labels)}
            kind = "pairwise" if any(a in cols and b in cols for a, b in PAIR_KEY_ALIASES + PAIR_PATH_ALIASES) else "point"
    scores = load_scores(scores_url, use=use, storage=storage, key_column=score_key, run_id=run_id)
    if kind == "point":
        return evaluate_point(labels, scores, benchmark, label_columns)
    if kind == "pairwise":
        return evaluate_pairwise(labels, scores, benchmark, ties=ties, tie_band=tie_band, compare=compare,
                                 label_columns=label_columns)
    raise UsageError("--kind must be point, pairwise or auto")


def format_report(res: dict[str, Any]) -> str:
    """A human-readable table of `res` (values in percent, 2 decimals)."""
    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.2f}"

    lines = [f"{res['kind']} evaluation, benchmark {res['benchmark']}, {res['use']} scores"
             + (f", {'with' if res['ties'] else 'without'} ties" + (f" (band {res['tie_band']})" if res["ties"] else "")
                if res["kind"] == "pairwise" else "")]
    if res["kind"] == "point":
        lines.append(f"{'':24}{'acc':>9}{'relaxed':>9}{'plcc':>9}{'srcc':>9}{'n':>7}")
        for name in (*DIMENSIONS, "overall", "avg"):
            if name in res:
                m = res[name]
                lines.append(f"{name:24}{f(m['acc']):>9}{f(m['relaxed_acc']):>9}{f(m['plcc']):>9}{f(m['srcc']):>9}"
                             f"{m.get('n', ''):>7}")
        lines.append(f"items: {res['labels']} labelled, {res['n']} evaluated, {res['missing']} missing {res['missing_by_reason']}")
    else:
        lines.append(f"{'':24}{'acc':>9}{'n':>7}{'score':>7}{'skip=':>7}")
        for name in (*DIMENSIONS, "overall"):
            if name in res:
                m = res[name]
                lines.append(f"{name:24}{f(m['acc']):>9}{m['n']:>7}{m['score']:>7}{m['skipped_same']:>7}")
        lines.append(f"pairs: {res['pairs']} labelled, {res['n']} with both scores, {res['missing']} missing "
                     f"{res['missing_by_reason']}")
    if res.get("missing_keys"):
        lines.append(f"missing keys (first {len(res['missing_keys'])}): {', '.join(res['missing_keys'])}")
    return "\n".join(lines)
