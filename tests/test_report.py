"""`vscore report`: a scores dataset with realistic values (correlated hard scores, soft scores from
confidences, unparsed rows, error rows from several stages, hostile strings in prompts and rationales)
written with the real output schema, rendered, checked as HTML, and rendered again in headless
Chromium (Debian's `chromium`), whose screenshot must not be blank."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.tools.report import error_reason, write_report
from pipeline.schema import OUTPUT_SCHEMA, make_row_id, rows_to_table

RUN = "vs2-0123456789ab"
EVIL = "<script>alert('x')</script> & <img src=x onerror=alert(1)>"


def _rows(n_ok: int = 48, seed: int = 0, timing: bool = True) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_ok):
        shard = f"s3://corpus/shards/shard-{i // 16:06d}.tar"
        key = f"clip_{i:04d}"
        base = rng.integers(1, 6)
        hard = [int(np.clip(base + rng.integers(-1, 2), 1, 5)) for _ in range(3)]
        conf = rng.beta(6, 2, size=3)
        unparsed = i % 12 == 5
        rationale = (f"The video shows a scene with score {hard}. Motion is {'smooth' if hard[2] > 3 else 'jittery'}; "
                     f"the subject {'matches' if hard[1] > 3 else 'does not match'} the prompt.")
        if i == 7:
            rationale = f"Contains markup {EVIL} that must stay text."
        row = {
            "row_id": make_row_id(shard, key), "run_id": RUN, "shard_group": f"g{i // 32:05d}", "key": key,
            "shard": shard, "prompt": f"A cat <b>jumps</b> & lands #{i}" if i == 3 else f"A drone shot of a coastline #{i}",
            "rationale": rationale, "raw_output": f"<think>{rationale}</think>(1) visual quality: {hard[0]} ...",
            "parse_mode": "failed" if unparsed else ("strict" if i % 5 else "tolerant"), "out_of_range": False,
            "num_frames": 16, "width": 448, "height": 252, "duration_s": 8.0, "prompt_tokens": 1400,
            "output_tokens": int(rng.integers(80, 300)), "model": "TIGER-Lab/VideoScore2", "template": "vs2-eval",
            "seed": i, "status": "ok", "meta_json": json.dumps({"source": "gen"}),
            "decode_s": float(rng.gamma(4, 0.05)) if timing else None,
            "score_s": float(rng.gamma(6, 0.2)) if timing else None,
        }
        if not unparsed:
            for d, h, c in zip(("visual_quality", "text_alignment", "physical_consistency"), hard, conf):
                row[d] = h
                row[f"{d}_soft"] = float(h * c)
                row[f"{d}_expected"] = float(np.clip(h + rng.normal(0, 0.3), 1, 5))
        rows.append(row)
    errors = [
        ("decode", "InvalidDataError: [Errno 1094995529] Invalid data found when processing input: '<none>'"),
        ("decode", "InvalidDataError: [Errno 1094995529] Invalid data found when processing input: '<none>'"),
        ("decode", "stream of 9000x9000 exceeds max_decoded_pixels 67108864"),
        ("read", "no prompt (no .json 'prompt' field and no .txt)"),
        ("engine", "quarantined: the engine died 2 times while scoring this sample alone"),
        ("parse", f"ValueError: bad output {EVIL}"),
    ]
    for j, (stage, msg) in enumerate(errors):
        shard = "s3://corpus/shards/shard-000009.tar"
        key = f"bad_{j}"
        rows.append({"row_id": make_row_id(shard, key), "run_id": RUN, "shard_group": "g00000", "key": key,
                     "shard": shard, "prompt": "p", "status": "error", "error_stage": stage, "error": msg,
                     "model": "TIGER-Lab/VideoScore2", "template": "vs2-eval",
                     "decode_s": 0.01 if timing and stage != "read" else None})
    return rows


@pytest.fixture(scope="module")
def scores_dir(tmp_path_factory):
    """A dataset laid out like `vscore score`'s output: hive partitions + a run summary."""
    root = tmp_path_factory.mktemp("scores") / "scores"
    rows = _rows()
    table = rows_to_table(rows)
    assert table.schema == OUTPUT_SCHEMA
    for group in ("g00000", "g00001"):
        part = root / f"run_id={RUN}" / f"shard_group={group}"
        part.mkdir(parents=True)
        sub = table.filter(np.array([r["shard_group"] == group for r in rows]))
        pq.write_table(sub.drop_columns(["run_id", "shard_group"]), part / "part-0.parquet")
    (root / "_vscore").mkdir()
    (root / "_vscore" / f"summary-{RUN}.json").write_text(json.dumps(
        {"run_id": RUN, "rows_out": len(rows), "wall_s": 61.5, "videos_per_s": round(len(rows) / 61.5, 3),
         "output_tokens": 9000, "engine": "vllm"}))
    return root, rows


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def test_report_html(scores_dir, tmp_path):
    root, rows = scores_dir
    out = tmp_path / "report.html"
    facts = write_report(str(root), out, png_dir=tmp_path / "plots")
    page = out.read_text()
    n_err = sum(r["status"] == "error" for r in rows)
    assert facts["rows"] == len(rows) and facts["errors"] == n_err and facts["ok"] == len(rows) - n_err
    assert facts["scored"] == sum(r["status"] == "ok" and r["parse_mode"] != "failed" for r in rows)
    assert facts["errors_by_stage"] == {"decode": 3, "read": 1, "engine": 1, "parse": 1}
    assert facts["runs"] == [RUN] and facts["throughput"]["runs"][0]["wall_s"] == 61.5

    p = _Collect()
    p.feed(page)
    tags = [t for t, _ in p.tags]
    # self-contained: every image inline, nothing fetched, no script at all (the hostile strings are text)
    imgs = [a for t, a in p.tags if t == "img"]
    assert len(imgs) >= 5 and all(a["src"].startswith("data:image/png;base64,") for a in imgs)
    assert "script" not in tags and "link" not in tags and not re.search(r"""(src|href)=["']?https?:""", page)
    assert "onerror" not in " ".join(str(a) for _, a in p.tags)
    text = "".join(p.text)
    assert EVIL in text  # shown, escaped, as the text it is
    assert "&lt;script&gt;" in page and "A cat &lt;b&gt;jumps&lt;/b&gt; &amp; lands" in page
    for heading in ("Score distributions", "Correlations between dimensions", "Soft-score calibration",
                    "Errors by stage and reason", "Throughput", "Best and worst examples"):
        assert f"<h2>{heading}</h2>" in page
    # the two identical decode errors are one reason; the example message is there
    reasons = {(r["stage"], r["reason"]): r["rows"] for r in facts["error_reasons"]}
    assert max(reasons.values()) == 2 and len(reasons) == 5
    # best examples really are the best
    ok = [r for r in rows if r["status"] == "ok" and r["parse_mode"] != "failed"]
    top = max(sum(r[d] for d in ("visual_quality", "text_alignment", "physical_consistency")) for r in ok)
    best0 = next(r for r in ok if r["row_id"] == facts["best"][0])
    assert sum(best0[d] for d in ("visual_quality", "text_alignment", "physical_consistency")) == top
    assert not set(facts["best"]) & set(facts["worst"])
    # calibration: soft/hard is the confidence we generated, between 0 and 1
    assert all(0 < c["mean_confidence"] <= 1 for c in facts["calibration"])
    # correlations computed from the data (the dimensions were generated correlated)
    assert facts["pearson"]["visual_quality~text_alignment"] > 0.3
    pngs = sorted(x.name for x in (tmp_path / "plots").iterdir())
    assert pngs == ["calibration.png", "correlations.png", "distributions.png", "errors.png", "throughput.png"]


def test_report_without_timing_or_scores(tmp_path):
    """No timing columns: a note instead of the throughput plot. No parsed scores: still renders."""
    rows = _rows(n_ok=6, timing=False)
    for r in rows:
        for d in ("visual_quality", "text_alignment", "physical_consistency"):
            r.pop(d, None), r.pop(f"{d}_soft", None)
        if r["status"] == "ok":
            r["parse_mode"] = "failed"
    path = tmp_path / "one.parquet"
    pq.write_table(rows_to_table(rows), path)
    from pipeline.cli import main

    assert main(["report", str(path), "--out", str(tmp_path / "r.html"), "--no-png"]) == 0
    page = (tmp_path / "r.html").read_text()
    assert "No per-row timing" in page and "No row has parsed scores" in page
    assert "No row with all three scores" in page
    assert not (tmp_path / "r-plots").exists()


def test_error_reason_masks_details():
    a = error_reason("InvalidDataError: [Errno 1094995529] Invalid data found when processing input: '/tmp/a.mp4'")
    b = error_reason("InvalidDataError: [Errno 1094995529] Invalid data found when processing input: '/tmp/b.mp4'")
    assert a == b
    assert error_reason("member mp4 is 123 bytes > max_sample_bytes 100") == error_reason("member mp4 is 9 bytes > max_sample_bytes 100")
    assert error_reason(None) == "(no message)"


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(scores_dir, tmp_path):
    from PIL import Image

    root, _ = scores_dir
    out = tmp_path / "report.html"
    write_report(str(root), out)
    shot = tmp_path / "shot.png"
    profile = tmp_path / "profile"
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", f"--screenshot={shot}",
           "--window-size=1280,2000", "--hide-scrollbars", out.resolve().as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.exists(), res.stderr[-2000:]
    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 2000)
    colors = img.getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 200, "screenshot is (nearly) blank"
    # not one colour dominating everything: plots and text cover a real share of the page
    dominant = max(c for c, _ in colors) / (img.size[0] * img.size[1])
    assert dominant < 0.9, dominant
    keep = os.environ.get("VSCORE_KEEP_SCREENSHOT")  # a path: keep the screenshot to look at it
    if keep:
        shutil.copy(shot, keep)


def test_report_says_when_the_scores_come_from_the_tiny_test_judge(tmp_path):
    """Rows whose `model` is a checkpoint dir marked as the format-trained tiny judge (config.json key)
    get the one plain line that their scores mean nothing; a real model id or an unmarked dir does not."""
    from pipeline.dev.tiny_judge import JUDGE_MARKER, JUDGE_NOTE, is_test_judge

    judge, plain = tmp_path / "judge", tmp_path / "plain"
    for d, cfg in ((judge, {JUDGE_MARKER: {"note": JUDGE_NOTE}}), (plain, {"model_type": "qwen2_5_vl"})):
        d.mkdir()
        (d / "config.json").write_text(json.dumps(cfg))
    assert is_test_judge(judge) and not is_test_judge(plain) and not is_test_judge("TIGER-Lab/VideoScore2")
    assert not is_test_judge(None) and not is_test_judge(tmp_path / "missing")
    for model, expect in ((judge, True), (plain, False), ("TIGER-Lab/VideoScore2", False)):
        rows = _rows(n_ok=6)
        for r in rows:
            r["model"] = str(model)
        path = tmp_path / f"{model.name if hasattr(model, 'name') else 'hub'}.parquet"
        pq.write_table(rows_to_table(rows), path)
        facts = write_report(str(path), tmp_path / "r.html")
        page = (tmp_path / "r.html").read_text()
        assert facts["test_judge"] is expect
        assert ("they carry no information about the videos" in page) is expect
