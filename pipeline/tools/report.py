"""`vscore report SCORES`: one self-contained HTML page (plots inlined as base64 PNG) about a scores dataset.

Sections: overview (rows, status, parse modes, runs), prefilter (skip reasons, GPU time saved, signals), score distributions per dimension (hard 1-5 and
soft), correlations between dimensions, soft-score calibration (soft vs hard, and the model's
confidence p(s*) = soft / hard), errors by stage and by reason, throughput (from the per-row timing
columns `decode_s`/`score_s`, and the run summary when it is next to the data), and the best and
worst examples with their rationales. Every string from the data is HTML-escaped.

SCORES is what `vscore score` wrote: a hive-partitioned Parquet dataset (local path or s3://...), or a
single Parquet file. Plots use matplotlib's Agg backend (no display needed) and can also be written as
PNG files.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.config import StorageOptions
from pipeline.dev.tiny_judge import JUDGE_NOTE, is_test_judge
from pipeline.tools.report_prefilter import prefilter_facts, prefilter_html

log = logging.getLogger(__name__)

DIMENSIONS = ("visual_quality", "text_alignment", "physical_consistency")
LABELS = {"visual_quality": "visual quality", "text_alignment": "text-to-video alignment",
          "physical_consistency": "physical / common-sense consistency"}
COLORS = {"visual_quality": "#3b6ea8", "text_alignment": "#d4843b", "physical_consistency": "#4f9a5b"}
TIME_COLUMNS = ("scored_at", "finished_at", "timestamp", "ts")  # wall-clock per row, if a run records one
EXAMPLES = 5
RATIONALE_CHARS = 1500


# --------------------------------------------------------------------------- loading

def load_scores(url: str, storage: StorageOptions | None = None, run_id: str | None = None) -> tuple[pa.Table, list[dict[str, Any]]]:
    """The scores table (all runs, or one) and the run summaries found under ``_vscore/``."""
    from pipeline.tools.dataset import open_scores
    from pipeline.storage import filesystem

    storage = storage or StorageOptions()
    sd = open_scores(url, storage, run_id=run_id)
    summaries: list[dict[str, Any]] = []
    if sd.root:
        fs, _ = filesystem(url, storage)
        for p in sorted(fs.glob(f"{sd.root}/_vscore/summary-*.json")):
            try:
                summaries.append(json.loads(fs.cat(p)))
            except (OSError, ValueError) as e:  # a summary is a bonus, never a failure
                log.warning("skipping %s: %s", p, e)
    table = sd.dataset.to_table(filter=sd.run_filter(run_id))
    # hive partition columns may come back dictionary-encoded: plain strings are easier downstream
    cols = [c.cast(pa.string()) if pa.types.is_dictionary(c.type) else c for c in table.columns]
    table = pa.Table.from_arrays(cols, names=table.column_names)
    if run_id:
        summaries = [s for s in summaries if s.get("run_id") == run_id]
    return table, summaries


# --------------------------------------------------------------------------- plots

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 100, "font.size": 9, "axes.titlesize": 10, "axes.spines.top": False,
                         "axes.spines.right": False})
    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def _col(df, name: str) -> np.ndarray:
    if name not in df:
        return np.array([], dtype=float)
    return df[name].to_numpy(dtype=float, na_value=np.nan)


def plot_distributions(ok) -> bytes:
    plt = _plt()
    fig, axes = plt.subplots(2, 3, figsize=(12, 5.6))
    for i, dim in enumerate(DIMENSIONS):
        hard = _col(ok, dim)
        hard = hard[~np.isnan(hard)]
        ax = axes[0, i]
        levels = np.arange(1, 6)
        counts = [int((hard == s).sum()) for s in levels]
        other = int(((hard < 1) | (hard > 5)).sum())
        ax.bar(levels, counts, color=COLORS[dim], width=0.7)
        for s, c in zip(levels, counts):
            if c:
                ax.text(s, c, str(c), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(levels)
        ax.set_title(f"{LABELS[dim]}: hard score" + (f" (+{other} out of range)" if other else ""))
        ax.set_xlabel(f"score (n={hard.size}, mean {hard.mean():.2f})" if hard.size else "score (no parsed scores)")
        ax.set_ylabel("rows")
        soft = _col(ok, f"{dim}_soft")
        soft = soft[~np.isnan(soft)]
        ax = axes[1, i]
        if soft.size:
            ax.hist(soft, bins=np.linspace(0, 5, 26), color=COLORS[dim], alpha=0.85)
            ax.set_xlabel(f"soft score (n={soft.size}, mean {soft.mean():.2f})")
        else:
            ax.text(0.5, 0.5, "no soft scores", ha="center", va="center", transform=ax.transAxes)
            ax.set_xlabel("soft score")
        ax.set_xlim(0, 5)
        ax.set_title(f"{LABELS[dim]}: soft score")
        ax.set_ylabel("rows")
    fig.tight_layout()
    return _png(fig)


def correlation_matrix(ok) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Pearson and Spearman correlations between the hard and soft scores (pairwise complete rows)."""
    names = [d for d in DIMENSIONS] + [f"{d}_soft" for d in DIMENSIONS]
    data = np.stack([_col(ok, n) if n in ok else np.full(len(ok), np.nan) for n in names]) if len(ok) else np.zeros((6, 0))
    k = len(names)
    pearson = np.full((k, k), np.nan)
    spearman = np.full((k, k), np.nan)
    for i in range(k):
        for j in range(k):
            m = ~np.isnan(data[i]) & ~np.isnan(data[j])
            if m.sum() < 3:
                continue
            a, b = data[i][m], data[j][m]
            pearson[i, j] = _corr(a, b)
            spearman[i, j] = _corr(_rank(a), _rank(b))
    return names, pearson, spearman


def _rank(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), as Spearman's rho needs."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0
        i = j + 1
    return ranks


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def plot_correlations(names: list[str], pearson: np.ndarray, spearman: np.ndarray) -> bytes:
    plt = _plt()
    short = [n.replace("visual_quality", "VQ").replace("text_alignment", "TA").replace("physical_consistency", "PC")
             .replace("_soft", " soft") for n in names]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for ax, mat, title in ((axes[0], pearson, "Pearson r"), (axes[1], spearman, "Spearman rho")):
        im = ax.imshow(np.nan_to_num(mat, nan=0.0), vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_xticks(range(len(short)), short, rotation=35, ha="right")
        ax.set_yticks(range(len(short)), short)
        for i in range(len(short)):
            for j in range(len(short)):
                v = mat[i, j]
                ax.text(j, i, "n/a" if math.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if not math.isnan(v) and abs(v) > 0.6 else "black")
        ax.set_title(title)
        ax.spines[:].set_visible(False)
    fig.colorbar(im, ax=axes, shrink=0.8)
    return _png(fig)


def calibration_table(ok) -> list[dict[str, Any]]:
    """Per dimension and hard score: rows, mean soft, mean expected score, mean confidence p(s*)."""
    out = []
    for dim in DIMENSIONS:
        hard, soft, exp = _col(ok, dim), _col(ok, f"{dim}_soft"), _col(ok, f"{dim}_expected")
        for s in range(1, 6):
            m = hard == s
            n = int(m.sum())
            if not n:
                continue
            sm = soft[m & ~np.isnan(soft)]
            em = exp[m & ~np.isnan(exp)]
            out.append({"dimension": dim, "hard": s, "rows": n, "with_soft": int(sm.size),
                        "mean_soft": float(sm.mean()) if sm.size else None,
                        "mean_expected": float(em.mean()) if em.size else None,
                        "mean_confidence": float((sm / s).mean()) if sm.size else None})
    return out


def plot_calibration(ok) -> bytes:
    plt = _plt()
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.9))
    rng = np.random.default_rng(0)
    for i, dim in enumerate(DIMENSIONS):
        ax = axes[i]
        hard, soft = _col(ok, dim), _col(ok, f"{dim}_soft")
        m = ~np.isnan(hard) & ~np.isnan(soft)
        ax.plot([0, 5.5], [0, 5.5], color="#999", lw=1, ls="--", label="soft = hard (p(s*) = 1)")
        if m.any():
            ax.scatter(hard[m] + rng.uniform(-0.15, 0.15, m.sum()), soft[m], s=9, alpha=0.45, color=COLORS[dim])
            levels = sorted(set(hard[m].astype(int)))
            ax.plot(levels, [soft[m][hard[m] == s].mean() for s in levels], "o-", color="black", ms=4, label="mean soft")
        else:
            ax.text(0.5, 0.5, "no rows with both scores", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlim(0.5, 5.5)
        ax.set_ylim(0, 5.5)
        ax.set_xlabel("hard score")
        ax.set_ylabel("soft score")
        ax.set_title(LABELS[dim] if len(LABELS[dim]) < 30 else "physical consistency")
        if i == 0:
            ax.legend(loc="upper left", fontsize=7, frameon=False)
    ax = axes[3]
    bins = np.linspace(0, 1, 21)
    any_conf = False
    for dim in DIMENSIONS:
        hard, soft = _col(ok, dim), _col(ok, f"{dim}_soft")
        m = ~np.isnan(hard) & ~np.isnan(soft) & (hard > 0)
        if m.any():
            any_conf = True
            ax.hist(np.clip(soft[m] / hard[m], 0, 1), bins=bins, histtype="step", lw=1.6, color=COLORS[dim],
                    label=dim.replace("_", " "))
    if any_conf:
        ax.legend(fontsize=7, frameon=False, loc="upper left")
    else:
        ax.text(0.5, 0.5, "no soft scores", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("confidence p(s*) = soft / hard")
    ax.set_ylabel("rows")
    ax.set_title("judge confidence")
    fig.tight_layout()
    return _png(fig)


def error_reason(message: str | None) -> str:
    """A stable reason class for an error message: its head (before details), with numbers, paths,
    hex ids and quoted values masked."""
    if not message:
        return "(no message)"
    head = re.split(r"(?<=[a-z)]): |; ", message, maxsplit=1)[0] if ": " in message else message
    if len(head) < 12 and ": " in message:  # "ValueError: ..." keeps the next clause too
        head = ": ".join(message.split(": ")[:2])
    head = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", head)
    head = re.sub(r"(s3|gs|file|https?)://\S+|(?<![\w<])/[\w.\-/]+", "<path>", head)
    head = re.sub(r"\b(?=[0-9a-f]*[a-f])[0-9a-f]{8,}\b", "<id>", head)
    head = re.sub(r"\d+(\.\d+)?", "N", head)
    return head[:160]


def errors_by_stage_reason(errs) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for row in errs.itertuples(index=False):
        stage = row.error_stage or "unknown"
        reason = error_reason(row.error)
        g = groups.setdefault((stage, reason), {"stage": stage, "reason": reason, "rows": 0, "example_key": row.key,
                                                "example_error": row.error})
        g["rows"] += 1
    return sorted(groups.values(), key=lambda g: (-g["rows"], g["stage"], g["reason"]))


def plot_errors(by_stage: dict[str, int]) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 2.6))
    stages = list(by_stage)
    ax.barh(stages, [by_stage[s] for s in stages], color="#b5473a")
    for y, s in enumerate(stages):
        ax.text(by_stage[s], y, f" {by_stage[s]}", va="center", fontsize=8)
    ax.invert_yaxis()
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("error rows")
    ax.set_title("errors by stage")
    fig.tight_layout()
    return _png(fig)


def throughput(df, summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """What the output says about speed. Wall-clock rates come from the run summary (or a per-row time
    column when a run records one); the per-row timing columns give per-actor rates and their spread."""
    out: dict[str, Any] = {"time_column": next((c for c in TIME_COLUMNS if c in df and df[c].notna().any()), None)}
    for col in ("decode_s", "score_s"):
        v = _col(df, col)
        v = v[~np.isnan(v) & (v > 0)]
        out[col] = {"rows": int(v.size), "total_s": float(v.sum()), "mean_s": float(v.mean()) if v.size else None,
                    "p50_s": float(np.percentile(v, 50)) if v.size else None,
                    "p95_s": float(np.percentile(v, 95)) if v.size else None,
                    "per_actor_videos_per_s": float(1 / v.mean()) if v.size else None}
    out["runs"] = [{**{k: s.get(k) for k in ("run_id", "rows_out", "wall_s", "videos_per_s", "output_tokens", "engine")},
                    "storage_retries": (s.get("storage_retries") or {}).get("total")} for s in summaries]
    return out


def plot_throughput(df, tp: dict[str, Any]) -> bytes | None:
    """Rolling videos/s over wall-clock time when rows carry a timestamp; otherwise the timing columns
    over the run's shard order (shards are read in order, so this is the run's progression)."""
    plt = _plt()
    tcol = tp["time_column"]
    has_timing = tp["decode_s"]["rows"] or tp["score_s"]["rows"]
    if not tcol and not has_timing:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
    if tcol:
        t = np.sort(_to_seconds(df[tcol]))
        t = t[~np.isnan(t)]
        t = t - t[0]
        width = max((t[-1] - t[0]) / 40, 1.0) if t.size > 1 else 1.0
        edges = np.arange(0, t[-1] + width, width) if t.size else np.array([0, 1])
        counts, _ = np.histogram(t, bins=edges)
        axes[0].plot(edges[:-1] / 60, counts / width, color="#3b6ea8")
        axes[0].set_xlabel("minutes since the first row")
        axes[0].set_ylabel("videos / s")
        axes[0].set_title(f"throughput over the run ({tcol})")
    else:
        order = df.sort_values(["shard", "key"], kind="mergesort") if "shard" in df else df
        window = max(5, len(order) // 30)
        for col, color, label in (("decode_s", "#d4843b", "decode s/video"), ("score_s", "#3b6ea8", "score s/video")):
            v = _col(order, col)
            if np.isnan(v).all():
                continue
            s = _rolling_nanmean(v, window)
            axes[0].plot(np.arange(len(s)), s, color=color, label=label)
        axes[0].set_xlabel(f"rows in shard order (rolling mean over {window})")
        axes[0].set_ylabel("seconds per video (per actor)")
        axes[0].set_title("per-video time over the run")
        axes[0].legend(fontsize=8, frameon=False)
    for col, color in (("decode_s", "#d4843b"), ("score_s", "#3b6ea8")):
        v = _col(df, col)
        v = v[~np.isnan(v) & (v > 0)]
        if v.size:
            axes[1].hist(v, bins=30, histtype="step", lw=1.6, color=color, label=f"{col} (p50 {np.median(v):.3g} s)")
    axes[1].set_xlabel("seconds per video")
    axes[1].set_ylabel("rows")
    axes[1].set_title("distribution of per-row times")
    axes[1].legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return _png(fig)


def _to_seconds(series) -> np.ndarray:
    import pandas as pd

    if pd.api.types.is_numeric_dtype(series):
        return series.to_numpy(dtype=float, na_value=np.nan)
    return pd.to_datetime(series, errors="coerce", utc=True).map(lambda x: x.timestamp() if x is not pd.NaT else np.nan).to_numpy(dtype=float)


def _rolling_nanmean(v: np.ndarray, window: int) -> np.ndarray:
    out = np.full(len(v), np.nan)
    for i in range(len(v)):
        w = v[max(0, i - window + 1): i + 1]
        w = w[~np.isnan(w)]
        if w.size:
            out[i] = w.mean()
    return out


# --------------------------------------------------------------------------- examples

def examples(ok, n: int = EXAMPLES) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Best and worst rows with all three hard scores, by mean hard score (mean soft breaks ties)."""
    dims = [d for d in DIMENSIONS if d in ok]
    if not dims or not len(ok):
        return [], []
    scored = ok.dropna(subset=dims).copy()
    if not len(scored):
        return [], []
    scored["_hard"] = scored[dims].astype(float).mean(axis=1)
    softs = [f"{d}_soft" for d in dims if f"{d}_soft" in scored]
    scored["_soft"] = scored[softs].astype(float).mean(axis=1) if softs else np.nan
    scored = scored.sort_values(["_hard", "_soft", "row_id"], ascending=[False, False, True], na_position="last")
    best = scored.head(n)
    worst = scored.iloc[::-1].head(n) if len(scored) > n else scored.iloc[::-1].head(0)
    if len(scored) > n:  # do not show a row as both best and worst
        worst = worst[~worst["row_id"].isin(best["row_id"])]
    return best.to_dict("records"), worst.to_dict("records")


# --------------------------------------------------------------------------- HTML

CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:0;color:#1d2530;background:#f5f6f8}
main{max-width:1200px;margin:0 auto;padding:24px 28px 60px;background:#fff}
h1{margin:0 0 4px;font-size:26px} h2{margin:34px 0 10px;font-size:19px;border-bottom:2px solid #e3e6ea;padding-bottom:4px}
.sub{color:#5b6675;margin:0 0 18px} .note{color:#5b6675;font-size:13px;margin:6px 0}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:14px 0}
.card{background:#f0f3f7;border-radius:8px;padding:10px 16px;min-width:120px}
.card b{display:block;font-size:22px} .card span{color:#5b6675;font-size:12px}
.card.bad{background:#fbeaea} .card.good{background:#e8f4ea}
table{border-collapse:collapse;font-size:13px;margin:8px 0} th,td{border:1px solid #dde1e6;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f0f3f7} td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;height:auto;display:block;margin:8px 0}
.ex{border:1px solid #dde1e6;border-radius:8px;padding:10px 14px;margin:10px 0}
.ex h4{margin:0 0 4px;font-size:14px} .ex .scores{font-family:ui-monospace,Menlo,monospace;font-size:12px;color:#33404f}
.ex .prompt{font-style:italic;color:#33404f;margin:6px 0} .ex pre{white-space:pre-wrap;word-break:break-word;font-size:12px;background:#f7f8fa;padding:8px;border-radius:6px;max-height:260px;overflow:auto;margin:6px 0 0}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:18px} @media (max-width:900px){.cols{grid-template-columns:1fr}}
code{font-size:12px}
"""


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _img(png: bytes | None, alt: str) -> str:
    if png is None:
        return ""
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _table(rows: list[dict[str, Any]], cols: list[tuple[str, str]], digits: int = 2) -> str:
    if not rows:
        return '<p class="note">none</p>'
    head = "".join(f"<th>{_e(label)}</th>" for _, label in cols)
    body = []
    for r in rows:
        cells = []
        for key, _ in cols:
            v = r.get(key)
            cls = ' class="num"' if isinstance(v, (int, float)) and not isinstance(v, bool) else ""
            cells.append(f"<td{cls}>{_e(_fmt(v, digits))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _score(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return str(int(v)) if float(v).is_integer() else f"{float(v):.2f}"


ABBR = {"visual_quality": "VQ", "text_alignment": "TA", "physical_consistency": "PC"}


def _example_html(r: dict[str, Any]) -> str:
    scores = "   ".join(f"{ABBR[d]} {_score(r.get(d))} (soft {_fmt(r.get(f'{d}_soft'))})" for d in DIMENSIONS)
    rationale = next((v for v in (r.get("rationale"), r.get("raw_output")) if isinstance(v, str) and v), "")  # NaN = null
    cut = len(rationale) > RATIONALE_CHARS
    rationale = rationale[:RATIONALE_CHARS] + (" …" if cut else "")
    return (f'<div class="ex"><h4>{_e(r.get("key"))} <span class="note">{_e(r.get("shard"))}</span></h4>'
            f'<div class="scores">{_e(scores)} · parse {_e(r.get("parse_mode"))} · row {_e(r.get("row_id"))}</div>'
            f'<div class="prompt">{_e(r.get("prompt"))}</div>'
            f'<pre>{_e(rationale) or "(no rationale)"}</pre></div>')


def build_report(table: pa.Table, summaries: list[dict[str, Any]] | None = None, title: str = "vscore report",
                 source: str = "") -> tuple[str, dict[str, bytes], dict[str, Any]]:
    """(html, {plot name: png bytes}, facts) for a scores table."""
    summaries = summaries or []
    df = table.to_pandas()
    n = len(df)
    status = df["status"] if "status" in df else None
    ok = df[status == "ok"] if status is not None else df
    errs = df[(status != "ok") & (status != "skipped")] if status is not None else df.iloc[0:0]  # skipped: not errors
    by_stage = errs["error_stage"].fillna("unknown").value_counts().to_dict() if len(errs) else {}
    parse_modes = ok["parse_mode"].fillna("none").value_counts().to_dict() if "parse_mode" in ok and len(ok) else {}
    runs = sorted(df["run_id"].dropna().unique().tolist()) if "run_id" in df else []
    models = sorted(df["model"].dropna().unique().tolist()) if "model" in df else []
    templates = sorted(df["template"].dropna().unique().tolist()) if "template" in df else []
    scored = int(ok[list(DIMENSIONS)].notna().all(axis=1).sum()) if len(ok) and all(d in ok for d in DIMENSIONS) else 0
    test_judge = any(is_test_judge(m) for m in models)  # the demo's judge (config.json marker): scores mean nothing

    plots: dict[str, bytes] = {}
    plots["distributions"] = plot_distributions(ok)
    names, pearson, spearman = correlation_matrix(ok)
    plots["correlations"] = plot_correlations(names, pearson, spearman)
    plots["calibration"] = plot_calibration(ok)
    if by_stage:
        plots["errors"] = plot_errors(by_stage)
    tp = throughput(df, summaries)
    tp_png = plot_throughput(df, tp)
    if tp_png:
        plots["throughput"] = tp_png
    calib = calibration_table(ok)
    reasons = errors_by_stage_reason(errs) if len(errs) else []
    best, worst = examples(ok)
    pre = prefilter_facts(df)

    facts = {"rows": n, "ok": int(len(ok)), "errors": int(len(errs)), "scored": scored, "errors_by_stage": by_stage,
             "parse_modes": parse_modes, "runs": runs, "models": models, "templates": templates, "test_judge": test_judge,
             "error_reasons": reasons, "calibration": calib, "throughput": tp, "prefilter": pre, "skipped": pre["skipped"],
             "best": [r["row_id"] for r in best], "worst": [r["row_id"] for r in worst],
             "pearson": {f"{a}~{b}": pearson[i, j] for i, a in enumerate(names) for j, b in enumerate(names) if i < j}}

    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'>",
             f"<style>{CSS}</style></head><body><main>",
             f"<h1>{_e(title)}</h1><p class='sub'>{_e(source)} · generated {_e(time.strftime('%Y-%m-%d %H:%M:%S %Z'))}</p>"]
    # overview
    pm = ", ".join(f"{k}: {v}" for k, v in sorted(parse_modes.items())) or "–"
    parts.append("<div class='cards'>"
                 f"<div class='card'><b>{n}</b><span>rows</span></div>"
                 f"<div class='card good'><b>{len(ok)}</b><span>status ok</span></div>"
                 f"<div class='card {'bad' if len(errs) else ''}'><b>{len(errs)}</b><span>errors</span></div>"
                 f"<div class='card'><b>{pre['skipped']}</b><span>skipped (prefilter)</span></div>"
                 f"<div class='card'><b>{scored}</b><span>with all 3 scores</span></div>"
                 f"<div class='card'><b>{len(runs)}</b><span>run{'s' if len(runs) != 1 else ''}</span></div></div>")
    parts.append(f"<p class='note'>parse modes of ok rows: {_e(pm)}<br>runs: {_e(', '.join(runs) or '–')}<br>"
                 f"models: {_e(', '.join(models) or '–')} · templates: {_e(', '.join(templates) or '–')}</p>")
    if test_judge:
        parts.append(f"<p class='note'><b>{_e(JUDGE_NOTE[0].upper() + JUDGE_NOTE[1:])}.</b></p>")
    if scored == 0 and len(ok):
        parts.append("<p class='note'><b>No row has parsed scores.</b> Every ok row's output failed to parse "
                     "(a random test model does this); the score sections below are empty.</p>")
    # distributions
    parts.append("<h2>Score distributions</h2><p class='note'>Top: the hard 1-5 scores parsed from the judge's "
                 "answer. Bottom: the soft scores, s* × p(s*) from the judge's token probabilities (0-5).</p>")
    parts.append(_img(plots["distributions"], "score distributions"))
    stats_rows = []
    for d in DIMENSIONS:
        for col in (d, f"{d}_soft", f"{d}_expected"):
            v = _col(ok, col)
            v = v[~np.isnan(v)]
            stats_rows.append({"column": col, "rows": int(v.size), "mean": float(v.mean()) if v.size else None,
                               "std": float(v.std()) if v.size else None, "min": float(v.min()) if v.size else None,
                               "max": float(v.max()) if v.size else None})
    parts.append(_table(stats_rows, [("column", "column"), ("rows", "rows"), ("mean", "mean"), ("std", "std"),
                                     ("min", "min"), ("max", "max")]))
    # correlations
    parts.append("<h2>Correlations between dimensions</h2><p class='note'>Over ok rows with both values. "
                 "High correlation between dimensions means the judge is not separating them.</p>")
    parts.append(_img(plots["correlations"], "correlations"))
    # calibration
    parts.append("<h2>Soft-score calibration</h2><p class='note'>Each soft score is the hard score times the "
                 "judge's probability of that score (renormalised over 1-5), so soft/hard is the judge's "
                 "confidence. Points on the dashed line are fully confident; low confidence marks rows worth a "
                 "second look or a best-of-n rerun.</p>")
    parts.append(_img(plots["calibration"], "calibration"))
    parts.append(_table(calib, [("dimension", "dimension"), ("hard", "hard"), ("rows", "rows"),
                                ("with_soft", "with soft"), ("mean_soft", "mean soft"),
                                ("mean_expected", "mean expected"), ("mean_confidence", "mean p(s*)")]))
    # errors
    parts.append("<h2>Errors by stage and reason</h2>")
    if reasons:
        parts.append(_img(plots.get("errors"), "errors by stage"))
        parts.append(_table(reasons[:30], [("stage", "stage"), ("reason", "reason"), ("rows", "rows"),
                                           ("example_key", "example key"), ("example_error", "example message")]))
        if len(reasons) > 30:
            parts.append(f"<p class='note'>{len(reasons) - 30} more reasons not shown.</p>")
    else:
        parts.append("<p class='note'>No error rows.</p>")
    parts.append(prefilter_html(pre, _table))
    # throughput
    parts.append("<h2>Throughput</h2>")
    if tp["runs"]:
        parts.append(_table(tp["runs"], [("run_id", "run"), ("rows_out", "rows"), ("wall_s", "wall s"),
                                         ("videos_per_s", "videos/s"), ("output_tokens", "output tokens"),
                                         ("engine", "engine"), ("storage_retries", "S3 retries")], digits=3))
    timing = [{"column": c, **{k: tp[c][k] for k in ("rows", "mean_s", "p50_s", "p95_s", "per_actor_videos_per_s", "total_s")}}
              for c in ("decode_s", "score_s")]
    if tp["decode_s"]["rows"] or tp["score_s"]["rows"]:
        parts.append(_img(plots.get("throughput"), "throughput"))
        parts.append(_table(timing, [("column", "column"), ("rows", "rows"), ("mean_s", "mean s"), ("p50_s", "p50 s"),
                                     ("p95_s", "p95 s"), ("per_actor_videos_per_s", "videos/s per actor"),
                                     ("total_s", "actor-seconds")], digits=3))
        if not tp["time_column"]:
            parts.append("<p class='note'>Rows carry no wall-clock timestamp, so the left plot follows the run "
                         "through its shards (read in order) rather than through time; wall-clock rates come "
                         "from the run summary above when it is stored with the data.</p>")
    else:
        parts.append("<p class='note'>No per-row timing (<code>decode_s</code>/<code>score_s</code> are absent "
                     "or empty in this dataset), so no throughput plot.</p>")
    # examples
    parts.append("<h2>Best and worst examples</h2><p class='note'>Ranked by the mean of the three hard scores "
                 "(mean soft score breaks ties). The rationale is the judge's own reasoning.</p>")
    if best or worst:
        parts.append("<div class='cols'><div><h3>Best</h3>" + "".join(_example_html(r) for r in best) + "</div>"
                     "<div><h3>Worst</h3>" + ("".join(_example_html(r) for r in worst) or "<p class='note'>too few rows</p>")
                     + "</div></div>")
    else:
        parts.append("<p class='note'>No row with all three scores.</p>")
    parts.append("</main></body></html>")
    return "".join(parts), plots, facts


def write_report(scores: str, out: str | Path = "report.html", storage: StorageOptions | None = None,
                 run_id: str | None = None, png_dir: str | Path | None = None, title: str | None = None) -> dict[str, Any]:
    """Render the report for the dataset at `scores` to `out` (and the plots to `png_dir`)."""
    table, summaries = load_scores(scores, storage, run_id)
    page, plots, facts = build_report(table, summaries, title=title or "vscore report", source=scores)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    if png_dir is not None:
        png_dir = Path(png_dir)
        png_dir.mkdir(parents=True, exist_ok=True)
        for name, png in plots.items():
            (png_dir / f"{name}.png").write_bytes(png)
    facts["out"] = str(out)
    facts["plots"] = sorted(plots)
    return facts
