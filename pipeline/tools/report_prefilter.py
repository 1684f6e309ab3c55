"""The report's prefilter section (`vscore report`): rows the prefilter skipped, by failed condition, rows
whose scores were reused (cache hits, in-run duplicates), the GPU time the skips saved (skipped rows x the engine seconds per scored video measured in the same data) and the
signals' distribution over the decoded rows (docs/signals.md)."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.run.stats import gpu_seconds_saved
from pipeline.schema import SIGNAL_COLUMNS
from pipeline.stages.prefilter import skip_conditions

NUMERIC_SIGNALS = tuple(c for c in SIGNAL_COLUMNS if c != "phash") + ("fps",)


def prefilter_facts(df) -> dict[str, Any]:
    """{skipped, skip_reasons: [{condition, rows, example_key}], engine_s_per_video, gpu_s_saved, signals: [...]}
    for a scores DataFrame (any subset of the output columns)."""
    status = df["status"] if "status" in df else None
    skipped = df[status == "skipped"] if status is not None else df.iloc[0:0]
    reasons: dict[str, dict[str, Any]] = {}
    for row in skipped.itertuples(index=False):
        for cond in skip_conditions(getattr(row, "error", None)):
            g = reasons.setdefault(cond, {"condition": cond, "rows": 0, "example_key": getattr(row, "key", None)})
            g["rows"] += 1
    score_s = df["score_s"].to_numpy(dtype=float, na_value=np.nan) if "score_s" in df else np.array([])
    score_s = score_s[~np.isnan(score_s)]
    saved = gpu_seconds_saved(len(skipped), float(score_s.sum()), int(score_s.size))
    signals = []
    for c in NUMERIC_SIGNALS:
        if c not in df:
            continue
        v = df[c].to_numpy(dtype=float, na_value=np.nan)
        v = v[~np.isnan(v)]
        if v.size:
            p5, p50, p95 = np.percentile(v, [5, 50, 95])
            signals.append({"signal": c, "rows": int(v.size), "p5": float(p5), "median": float(p50), "p95": float(p95)})
    from_cache = int(df["from_cache"].fillna(False).astype(bool).sum()) if "from_cache" in df else 0
    duplicates = int(df["duplicate_of"].notna().sum()) if "duplicate_of" in df else 0
    return {"from_cache": from_cache, "duplicates": duplicates,
            "skipped": int(len(skipped)), "skip_reasons": sorted(reasons.values(), key=lambda g: (-g["rows"], g["condition"])),
            "engine_s_per_video": float(score_s.mean()) if score_s.size else None, "gpu_s_saved": saved, "signals": signals}


def prefilter_html(f: dict[str, Any], table) -> str:
    """The section's HTML; `table(rows, cols, digits)` is the report's table renderer."""
    parts = ["<h2>Prefilter and signals</h2>"]
    if f["skipped"]:
        per = f["engine_s_per_video"]
        saved = (f"<b>~{f['gpu_s_saved']:.1f} GPU-seconds not spent</b> ({f['skipped']} rows x {per:.3f} s, the mean engine "
                 "seconds per scored video in this data)" if per is not None else "no scored row to measure the engine time by")
        parts.append(f"<p class='note'>{f['skipped']} rows were skipped by the prefilter (status <code>skipped</code>): "
                     f"never sent to the judge. {saved}.</p>")
        parts.append(table(f["skip_reasons"], [("condition", "failed condition"), ("rows", "rows"), ("example_key", "example key")], 2))
    else:
        parts.append("<p class='note'>No row was skipped by a prefilter.</p>")
    if f.get("from_cache") or f.get("duplicates"):
        parts.append(f"<p class='note'>Scores reused instead of scored again: {f.get('from_cache', 0)} rows from the cross-run "
                     f"score cache (<code>from_cache</code>), {f.get('duplicates', 0)} rows copying a clip already scored in the "
                     "same run (<code>duplicate_of</code>); no engine call for either.</p>")
    if f["signals"]:
        parts.append("<p class='note'>Signals over the decoded rows (definitions, scales: docs/signals.md).</p>")
        parts.append(table(f["signals"], [("signal", "signal"), ("rows", "rows"), ("p5", "p5"), ("median", "median"), ("p95", "p95")], 2))
    return "".join(parts)
