"""The ratio table (each mode's lines, in registry order) and the markdown block appended to
bench/results.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .modes import all_modes


def ratio_table(res: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for mode in all_modes():
        lines += mode.report(res)
    return lines


def write_results(path: Path, res: dict[str, Any], mode: str) -> None:
    m = res["machine"]
    v = m["versions"]
    import shlex

    args = " ".join(shlex.quote(a) for a in res.get("command", []))  # the exact command, to reproduce
    head = [f"## {m['date']}: `jobs/bench.py{(' ' + args) if args else ''}`", "",
            f"- machine: {m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable), {m['ram_gib']} GiB RAM, GPU: {m['gpu']}",
            f"- versions: python {m['python']}, torch {v['torch']}, ray {v['ray']}, av {v['av']} ({v['av_ffmpeg']}), vllm {v['vllm']}, "
            f"transformers {v['transformers']}, decord {v['decord']}, qwen-vl-utils {v['qwen-vl-utils']}, ffmpeg CLI: {v['ffmpeg_cli']}",
            "- load (1-min average) at section start/end: " + ", ".join(
                f"{k} {sec['load']['load_at_start']}/{sec['load']['load_at_end']}" for k, sec in res.items() if isinstance(sec, dict) and "load" in sec),
            f"- total wall: {res['wall_s']:.0f} s"]
    if not res.get("gpu"):
        head.append("- GPU: none on this machine; GPU figures pending a device run (`python jobs/bench.py --gpu`).")
    if res.get("pipeline", {}).get("overrides"):
        head.append(f"- pipeline overrides: {res['pipeline']['overrides']}")
    slim = json.loads(json.dumps(res, default=str))
    for k in ("pipeline",):
        if k in slim:
            for runs in slim[k]["runs"].values():
                for r in runs:
                    r.pop("peak", None)
    body = head + ratio_table(res) + ["", "<details><summary>raw results (JSON)</summary>", "", "```json",
                                      json.dumps(slim, indent=None, sort_keys=True, default=str), "```", "", "</details>", "", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with open(path, "a") as f:
        if new:
            f.write("# vscore benchmark results\n\nAppended by `python jobs/bench.py` (see jobs/benchmarks/ and docs/performance.md). "
                    "Newest last.\n\n")
        f.write("\n".join(body))
