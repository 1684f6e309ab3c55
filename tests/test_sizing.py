"""`vscore plan` (pipeline/tools/sizing.py): the calculator against hand computations written out here from
the documented constants, the CLI (table, --json, invalid input), and the README / docs/performance.md
sizing examples against the calculator's output."""

from __future__ import annotations

import json
import math
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.tools import sizing
from pipeline.tools.sizing import SizingError, decode_cores_per_gpu, format_sizing, make_job, parse_clip, size_job

REPO = Path(__file__).resolve().parent.parent


def test_constants_are_the_documented_ones():
    """The hand computations below use these figures; if a constant moves, redo them (and the docs)."""
    r480, r720 = sizing.DECODE_REFS
    assert (r480.width, r480.height, r480.fps, r480.seconds, r480.videos_per_cpu_s) == (854, 480, 24, 5, 6.61)
    assert (r720.width, r720.height, r720.fps, r720.seconds, r720.videos_per_cpu_s) == (1280, 720, 24, 5, 3.66)
    assert (sizing.REAL_MIX_VIDEOS_PER_CPU_S, sizing.REAL_MIX_SKIP_NONREF_SPEEDUP) == (4.93, 1.34)
    assert sizing.PIPELINE_EFFICIENCY == 0.75
    assert (sizing.SCORE_ACTOR_FIXED_S, sizing.SCORE_ACTOR_S_PER_VISUAL_TOKEN, sizing.IO_RAY_CORES_PER_GPU) == (0.0255, 2.47e-6, 1.0)
    assert sizing.PATCHIFY_S_PER_VISUAL_TOKEN == 3.6e-6
    assert [(r.skip_nonref_speedup) for r in sizing.DECODE_REFS] == [1.24, 1.19]
    assert sizing.FRAME_BYTES_PER_VISUAL_TOKEN == 4704 and sizing.PROCESSED_BYTES_PER_VISUAL_TOKEN == 18816
    assert (sizing.REF_VISUAL_TOKENS, sizing.TEXT_PROMPT_TOKENS, sizing.OUTPUT_TOKENS) == (2550, 642, 300)
    assert sizing.GPUS["h100"].assumed_ref_videos_per_s == 6.0


def test_readme_example_by_hand():
    # 2,000,000 videos in 8 h of 5 s 480p24 clips on H100s, 8 GPUs and 16 decode cores per node
    rate = 2_000_000 / (8 * 3600)  # 69.444 videos/s
    gpu_rate = 6.0  # ASSUMED at the reference workload, and this clip *is* the reference workload
    gpus_exact = rate / gpu_rate  # 11.574
    # measured 6.61 videos/s per core at 5 s 480p, x 1.24 with decode.skip_nonref (the default), pipeline keeps 75%;
    # plus the decode stage's patchify (decode.patchify, the default): 3.6 us x 2,550 visual tokens, also / 0.75
    patch_core_s = 3.6e-6 * 2550 / 0.75  # 12.2 ms
    decode_core_s = (1 / (6.61 * 1.24)) / 0.75 + patch_core_s
    decode_exact = rate * decode_core_s  # 11.297 + 0.850 = 12.147
    # scoring actor (measured, issue 15, decode-made patches): 25.5 ms + 2.47 us x 2,550 visual tokens = 31.8 ms per video
    actor_exact = rate * (0.0255 + 2.47e-6 * 2550)  # 2.208
    cpu_exact = decode_exact + actor_exact + 12 * 1.0  # + reads/writes/Ray per GPU
    # frames in transit: 10 frames x 476 x 840 x 3 bytes = 11,995,200 bytes per video
    net_mb_s = rate * 10 * 476 * 840 * 3 / 1e6  # 833.0 MB/s
    assert round(gpus_exact, 3) == 11.574 and round(decode_exact, 3) == 12.147 and round(actor_exact, 3) == 2.208
    assert round(net_mb_s, 1) == 833.0

    s = size_job(make_job(2_000_000, 8, clip="5s@480p", gpu="h100"))
    assert s.videos_per_s == pytest.approx(rate)
    assert s.gpu_videos_per_s == pytest.approx(gpu_rate)
    assert s.gpus_exact == pytest.approx(gpus_exact) and s.gpus == 12
    assert s.decode_cores_exact == pytest.approx(decode_exact) and s.decode_cores == 13
    assert s.amounts["decode patchify (numpy)"] == pytest.approx(rate * patch_core_s)
    assert s.amounts["scoring actor CPU"] == pytest.approx(actor_exact)
    assert s.cpu_cores_exact == pytest.approx(cpu_exact) and s.cpu_cores == 27
    assert s.amounts["frames in transit"] == pytest.approx(net_mb_s)
    assert (s.nodes_for_gpus, s.nodes_for_decode, s.nodes) == (2, 1, 2)  # 12 / 8 -> 2; 13 / 16 -> 1
    assert s.decode_cores_per_gpu == pytest.approx(6.0 * decode_core_s)  # 1.05 cores keep one H100 busy
    assert s.score_actor_cores_per_gpu == pytest.approx(6.0 * 0.0317985)  # 0.19 of a core per GPU
    assert s.transit_mb_per_s_per_gpu == pytest.approx(6.0 * 11.9952)  # 72 MB/s = 0.58 Gbit/s per GPU
    assert s.tokens == {"visual": 2550, "prompt": 3192, "output": 300}


def test_long_1080p_clip_by_hand():
    # 1,000,000 videos in 10 h of 10 s 1080p30 clips, 4 GPUs and 64 decode cores per node
    rate = 1_000_000 / (10 * 3600)  # 27.778 videos/s
    # judge: 10 s at 2 fps -> 20 frames; 1920x1080 = 2,073,600 px > 602,112 -> beta = sqrt(2073600 / 602112)
    beta = math.sqrt(1920 * 1080 / 602112)  # 1.8558
    h, w = math.floor(1080 / beta / 28) * 28, math.floor(1920 / beta / 28) * 28
    assert (w, h) == (1008, 560)
    visual = 20 // 2 * (560 // 28) * (1008 // 28)  # 10 x 20 x 36 = 7,200
    prompt = visual + 642
    flops = visual * 13.6e12 / 2550 + prompt * 38.1e12 / 2800 + 300 * 4.6e12 / 300  # 149.7 TFLOP
    ref_flops = 2550 * 13.6e12 / 2550 + 3192 * 38.1e12 / 2800 + 300 * 4.6e12 / 300  # 61.6 TFLOP
    gpu_rate = 6.0 * ref_flops / flops  # 2.470 videos/s per H100 (ASSUMED, FLOP-scaled)
    gpus_exact = rate / gpu_rate  # 11.245 -> 12
    # decode: nearest measured frame size is 720p (1280x720, 120 frames, 3.66 videos/s per core)
    # and decode.skip_nonref (the default) is 1.19x there
    decode_core_s = (1920 * 1080 * 300) / (1280 * 720 * 120 * 3.66 * 1.19) / 0.75  # 1.722 core-s per video
    decode_core_s += 3.6e-6 * visual / 0.75  # + the decode stage's patchify: 34.6 ms
    decode_exact = rate * decode_core_s  # 47.83 + 0.96 = 48.79 -> 49
    actor_exact = rate * (0.0255 + 2.47e-6 * visual)  # 43.3 ms per video -> 1.202 cores
    assert round(flops / 1e12, 1) == 149.7 and round(gpu_rate, 3) == 2.470
    assert round(gpus_exact, 3) == 11.245 and round(decode_exact, 2) == 48.79 and round(actor_exact, 3) == 1.202

    s = size_job(make_job(1_000_000, 10, clip="10s@1080p@30fps", gpus_per_node=4, decode_cores_per_node=64))
    assert s.tokens == {"visual": 7200, "prompt": 7842, "output": 300}
    assert s.gpu_videos_per_s == pytest.approx(gpu_rate)
    assert s.gpus_exact == pytest.approx(gpus_exact) and s.gpus == 12
    assert s.decode_cores_exact == pytest.approx(decode_exact) and s.decode_cores == 49
    assert s.cpu_cores_exact == pytest.approx(decode_exact + actor_exact + 12) and s.cpu_cores == 62
    assert s.amounts["frames in transit"] == pytest.approx(rate * 20 * 560 * 1008 * 3 / 1e6)
    assert (s.nodes_for_gpus, s.nodes_for_decode, s.nodes) == (3, 1, 3)
    assert s.ceiling_videos_per_s == pytest.approx(800e12 / flops)


def test_given_gpu_rate_real_mix_skip_nonref_by_hand():
    # 500,000 real-mix videos in 5 h, measured 10 videos/s per GPU given, decode.skip_nonref on
    rate = 500_000 / (5 * 3600)  # 27.778
    gpus_exact = rate / 10  # 2.778 -> 3
    decode_exact = rate / (4.93 * 1.34) / 0.75 + rate * 3.6e-6 * 2550 / 0.75  # 5.606 + 0.340 = 5.946 -> 6
    s = size_job(make_job(500_000, 5, clip="real", gpu_videos_per_s=10, skip_nonref=True))
    assert s.gpus_exact == pytest.approx(gpus_exact) and s.gpus == 3
    assert s.decode_cores_exact == pytest.approx(decode_exact) and s.decode_cores == 6
    actor_exact = rate * (0.0255 + 2.47e-6 * 2550)  # the real mix is sized at the reference workload's tokens
    assert s.cpu_cores == math.ceil(decode_exact + actor_exact + 3) == 10
    assert s.nodes == 1
    assert s.terms[0].status == "given"


def test_decode_scales_by_decoded_pixels():
    # same frame size as a reference: exactly the measured rate; twice the frames: twice the cost
    # (+ the decode stage's patchify: 3.6 us per visual token, which scales with the *kept* frames instead)
    full = dict(skip_nonref=False)
    patch = lambda tokens: 3.6e-6 * tokens / 0.75  # noqa: E731
    assert decode_cores_per_gpu("5s@720p", 3.66, **full) == pytest.approx(1 / 0.75 + 3.66 * patch(3600))
    assert decode_cores_per_gpu("10s@720p", 1, **full) == pytest.approx(2 * decode_cores_per_gpu("5s@720p", 1, **full))
    # twice the source frames at the same 2 fps plan: twice the decode, the same patchify
    assert decode_cores_per_gpu("5s@480p@48fps", 1, **full) == pytest.approx(
        2 * decode_cores_per_gpu("5s@480p", 1, **full) - patch(2550))
    # 832x480 scales from the 480p reference by pixels per frame (8 s at 2 fps: 16 frames, 4,080 visual tokens)
    assert decode_cores_per_gpu("8s@832x480", 1, **full) == pytest.approx(
        832 * 480 * 192 / (854 * 480 * 120 * 6.61) / 0.75 + patch(sizing.judge_tokens(parse_clip("8s@832x480"))["visual"]))
    # decode.skip_nonref (the default since issue 15) divides the decode by the reference's measured speed-up
    assert decode_cores_per_gpu("5s@720p", 3.66) == pytest.approx(1 / 0.75 / 1.19 + 3.66 * patch(3600))


@pytest.mark.parametrize("spec, want", [
    ("5s@480p", (5, 854, 480, 24)), ("10s@720p", (10, 1280, 720, 24)), ("10s@1080p", (10, 1920, 1080, 24)),
    ("8s@832x480", (8, 832, 480, 24)), ("10s@1080p@30fps", (10, 1920, 1080, 30)), ("2.5s@720p", (2.5, 1280, 720, 24)),
    ("1m@480p", (60, 854, 480, 24)), ("5S@480P", (5, 854, 480, 24)),
])
def test_parse_clip(spec, want):
    c = parse_clip(spec)
    assert (c.seconds, c.width, c.height, c.fps) == want


@pytest.mark.parametrize("bad", ["5x@480p", "480p", "5s", "5s@481q", "5s@0x480", "-5s@480p", "5s@480p@0fps", ""])
def test_parse_clip_rejects(bad):
    with pytest.raises(SizingError):
        parse_clip(bad)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "plan", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_cli_table_and_json():
    r = _cli("--videos", "2000000", "--hours", "8", "--clip", "5s@480p", "--gpu", "h100")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert re.search(r"^GPUs \(H100\):\s+12\s+\(11\.57 at 6\.00 videos/s per GPU, ASSUMED", out, re.M)
    assert re.search(r"^decode cores:\s+13\s+\(12\.15\)", out, re.M)
    assert re.search(r"^nodes:\s+2\s+\(GPUs: 12 / 8 per node = 2; decode: 13 / 16 per node = 1\)", out, re.M)
    assert re.search(r"^network in all \(frames, decode -> scoring\): 833\.00 MB/s", out, re.M)
    assert "assumptions:" in out and "not measured yet:" in out and "ASSUMED" in out

    r = _cli("--videos", "2000000", "--hours", "8", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert (d["gpus"], d["decode_cores"], d["cpu_cores"], d["nodes"]) == (12, 13, 27, 2)
    assert d["gpu_rate_status"] == "ASSUMED" and d["gpu_videos_per_s"] == 6.0
    assert d["gpus_exact"] == pytest.approx(2e6 / 28800 / 6)
    assert [t["name"] for t in d["terms"]] == ["judge (vLLM)", "decode (PyAV)", "decode patchify (numpy)", "scoring actor CPU",
                                               "reads, writes, driver, Ray", "frames in transit"]
    r = _cli("--videos", "2000000", "--hours", "8", "--no-skip-nonref", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["decode_cores"] == 15  # the full decode: 14.01 + 0.85 patchify
    assert d["assumptions"] and d["not_measured"]

    r = _cli("--videos", "2000000", "--hours", "8", "--gpu-videos-per-s", "8")
    assert r.returncode == 0 and re.search(r"^GPUs \(H100\):\s+9\s+\(8\.68 at 8\.00 videos/s per GPU, given", r.stdout, re.M)


@pytest.mark.parametrize("args", [
    ["--videos", "-5", "--hours", "8"], ["--videos", "100", "--hours", "-1"], ["--videos", "abc", "--hours", "8"],
    ["--videos", "100", "--hours", "8", "--gpu", "tpu9"], ["--videos", "100", "--hours", "8", "--clip", "five@480p"],
    ["--videos", "100", "--hours", "8", "--gpus-per-node", "0"], ["--videos", "100", "--hours", "8", "--gpu-videos-per-s", "-2"],
    ["--videos", "100", "--hours", "8", "--decode-cores-per-node", "nan"],
])
def test_cli_invalid_input_one_line_exit_2(args, capsys):
    assert main(["plan", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vscore plan: ")


def test_cli_invalid_input_subprocess():
    r = _cli("--videos", "100", "--hours", "8", "--gpu", "tpu9")
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1


def _readme_example() -> tuple[list[str], list[str]]:
    """The `$ vscore plan ...` block of README.md: (arguments, quoted output lines)."""
    text = (REPO / "README.md").read_text()
    m = re.search(r"```\n\$ vscore plan (?P<args>[^\n]*)\n(?P<out>.*?)```", text, re.S)
    assert m, "README.md has no ```$ vscore plan ...``` example"
    return shlex.split(m["args"]), [ln for ln in m["out"].splitlines() if ln.strip()]


def test_readme_example_matches_calculator():
    args, quoted = _readme_example()
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "plan", *args], cwd=REPO, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    norm = {" ".join(ln.split()) for ln in out.splitlines()}
    missing = [ln for ln in quoted if " ".join(ln.split()) not in norm and not ln.strip().startswith("...")]
    assert not missing, f"README sizing example differs from `vscore plan {' '.join(args)}`: {missing}"
    numbers = {k: int(re.search(rf"^{k}[^:]*:\s+(\d+)", "\n".join(quoted), re.M)[1])
               for k in ("GPUs", "decode cores", "nodes")}
    assert numbers == {"GPUs": 12, "decode cores": 13, "nodes": 2}  # the worked example above, by hand


def _doc_rows(path: Path) -> list[list[str]]:
    rows = []
    for ln in path.read_text().splitlines():
        if re.match(r"\|\s*`vscore plan --clip ", ln):
            rows.append([c.strip() for c in ln.strip().strip("|").split("|")])
    return rows


@pytest.mark.parametrize("doc", ["README.md", "docs/performance.md"])
def test_per_gpu_tables_match_calculator(doc):
    """Rows `| `vscore plan --clip SPEC` | visual tokens | H100 videos/s (ASSUMED) | cores at that rate | at 6/s | at 14/s |`."""
    rows = _doc_rows(REPO / doc)
    if doc == "docs/performance.md":
        assert len(rows) >= 4
    for row in rows:
        spec = re.search(r"--clip (\S+)`", row[0])[1]
        # the tables are full-decode figures (decode.skip_nonref: false); the text says to divide by 1.2-1.3
        s = size_job(make_job(1, 1, clip=spec, skip_nonref=False))
        want = [f"{s.tokens['visual']:,}", f"{s.gpu_videos_per_s:.1f}", f"{s.decode_cores_per_gpu:.1f}",
                f"{decode_cores_per_gpu(spec, 6, skip_nonref=False):.1f}", f"{decode_cores_per_gpu(spec, 14, skip_nonref=False):.1f}"]
        got = [re.search(r"[\d.,]+", c)[0] for c in row[1:6]]
        assert got == want, f"{doc}: row for {spec}: {got} != calculator {want}"
