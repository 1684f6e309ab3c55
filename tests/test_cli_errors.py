"""Every `vscore` command given a wrong path, an empty folder, a dataset of another schema, a run id that is
not there or a bad config prints ONE line on stderr (`vscore <command>: <message>`, naming the path and
what was expected) and exits 2: no traceback, no log noise. And the same checks never reject a valid scores
dataset, with the internal files a run leaves beside its Parquet (`_vscore/`, `_SUCCESS`, `*.parquet.tmp`).

One case per command runs the real CLI in a fresh interpreter (`python -m pipeline.cli`, so the whole
stderr is seen, logging included); the rest call `pipeline.cli.main` in-process (fast) and read stderr
through capsys."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from pipeline.schema import make_row_id, rows_to_table

REPO = Path(__file__).resolve().parent.parent
RUN = "vs2-clierrors01"
DATASET_TOOLS = ("report", "filter", "eval", "best-of-n", "reparse")


def _rows(n: int = 6) -> list[dict]:
    rows = []
    for i in range(n):
        shard, key = "s3://b/shards/shard-000000.tar", f"clip{i}"
        v, t, p = 1 + i % 5, 1 + (i + 2) % 5, 1 + (i + 4) % 5
        rows.append({"row_id": make_row_id(shard, key), "run_id": RUN, "shard_group": "g00000", "key": key,
                     "shard": shard, "prompt": f"prompt {i % 3}", "status": "ok", "parse_mode": "strict",
                     "visual_quality": v, "text_alignment": t, "physical_consistency": p,
                     "visual_quality_soft": v - 0.1, "text_alignment_soft": t - 0.2, "physical_consistency_soft": p - 0.3,
                     "rationale": "fine", "out_of_range": False, "model": "m", "template": "vs2-eval",
                     "raw_output": f"(1) visual quality: {v}\n(2) text-to-video alignment: {t}\n"
                                   f"(3) physical/common-sense consistency: {p}"})
    return rows


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, str]:
    """demo/ like `vscore demo` leaves it (tiny-model/ beside scores/, a valid hive dataset with the run's
    internal files), an empty folder, a Parquet dataset of another schema, a non-Parquet file, labels."""
    root = tmp_path_factory.mktemp("cli-errors")
    demo = root / "demo"
    (demo / "tiny-model").mkdir(parents=True)
    (demo / "tiny-model" / "chat_template.jinja").write_text("{% for m in messages %}{{ m }}{% endfor %}")
    (demo / "tiny-model" / "config.json").write_text("{}")
    scores = demo / "scores"
    part = scores / f"run_id={RUN}" / "shard_group=g00000"
    part.mkdir(parents=True)
    pq.write_table(rows_to_table(_rows()).drop_columns(["run_id", "shard_group"]), part / "part-0001.parquet")
    (part / "part-0002.parquet.tmp").write_bytes(b"half-written")  # an interrupted write's leftover
    (scores / "_vscore" / "commits").mkdir(parents=True)
    (scores / "_vscore" / "commits" / "x.json").write_text("{}")
    (scores / "_vscore" / f"summary-{RUN}.json").write_text(json.dumps({"run_id": RUN, "rows_out": 6}))
    (scores / "_SUCCESS").write_text("")
    (root / "empty").mkdir()
    (root / "foreign").mkdir()
    pq.write_table(pa.table({"city": ["a", "b"], "population": [1, 2]}), root / "foreign" / "part-0.parquet")
    (root / "notes.txt").write_text("not a dataset")
    (root / "labels.jsonl").write_text("".join(json.dumps({"key": r["key"], "visual_quality": r["visual_quality"],
                                                           "text_alignment": r["text_alignment"],
                                                           "physical_consistency": r["physical_consistency"]}) + "\n"
                                               for r in _rows()))
    (root / "config-unknown-key.yaml").write_text(
        (REPO / "configs" / "local.yaml").read_text() + "\nengine_typo:\n  kind: vllm\n")
    (root / "config-bad-yaml.yaml").write_text("input: {shards: [unclosed\n")
    return {"root": str(root), "demo": str(demo), "scores": str(scores), "empty": str(root / "empty"),
            "foreign": str(root / "foreign"), "file": str(root / "notes.txt"), "labels": str(root / "labels.jsonl"),
            "missing": str(root / "no-such-folder"), "out": str(root / "out")}


def cli(*args: str) -> tuple[int, str, str]:
    """The real command in a fresh interpreter."""
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=120)
    return r.returncode, r.stdout, r.stderr


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def one_line(cmd: str, code: int, err: str, *expect: str) -> str:
    """Exit 2 and exactly one stderr line, `vscore CMD: ...`, holding every string of `expect`."""
    lines = err.splitlines()
    assert code == 2, err
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{err}"
    assert lines[0].startswith(f"vscore {cmd}: "), lines[0]
    for e in expect:
        assert e in lines[0], (e, lines[0])
    assert "Traceback" not in err
    return lines[0]


def _args(tool: str, scores: str, out: str, run_id: str | None = None, labels: str = "") -> list[str]:
    """Arguments of a dataset tool reading `scores` (outputs under `out`)."""
    extra = ["--run-id", run_id] if run_id is not None else []
    if tool == "report":
        return ["report", scores, "--out", f"{out}/report.html", "--no-png", *extra]
    if tool == "filter":
        return ["filter", scores, f"{out}/kept.jsonl", "--where", "visual_quality >= 3", *extra]
    if tool == "eval":
        return ["eval", "--scores", scores, "--labels", labels, "--kind", "point", "--use", "hard", *extra]
    if tool == "best-of-n":
        return ["best-of-n", scores, f"{out}/best.parquet", *extra]
    assert not extra
    return ["reparse", scores, f"{out}/reparsed"]


# --------------------------------------------------------------------------- the real CLI, one case per command

@pytest.mark.parametrize("tool", DATASET_TOOLS)
def test_dataset_tool_on_a_demo_root_suggests_scores(tool, paths):
    """The reported case: a demo's root (tiny-model/ beside scores/) used to give a pyarrow traceback
    about chat_template.jinja."""
    code, _, err = cli(*_args(tool, paths["demo"], paths["out"], labels=paths["labels"]))
    line = one_line(tool, code, err, paths["demo"], f"did you mean {paths['scores']}?")
    assert "jinja" not in line and "magic" not in line


@pytest.mark.parametrize("args, expect", [
    (["pack", "{missing}", "{out}/shards"], ["no source folder at {missing}"]),
    (["score", "{missing}/run.yaml"], ["no config file at {missing}/run.yaml"]),
    (["score", "{root}/config-unknown-key.yaml"], ["config-unknown-key.yaml", "engine_typo: unknown key"]),
    (["submit", "{missing}/run.yaml", "--address", "http://127.0.0.1:1"], ["no config file at {missing}/run.yaml"]),
    (["tiny-model", "{file}"], ["{file} is a file; expected a folder"]),
    (["demo", "--out", "{file}"], ["--out {file} is a file"]),
])
def test_other_commands_wrong_path(args, expect, paths):
    args = [a.format(**paths) for a in args]
    code, out, err = cli(*args)
    one_line(args[0], code, err, *(e.format(**paths) for e in expect))
    assert out == ""


# --------------------------------------------------------------------------- dataset tools, in-process

@pytest.mark.parametrize("tool", DATASET_TOOLS)
def test_dataset_tool_wrong_inputs(tool, paths, capsys):
    out, labels = paths["out"], paths["labels"]
    cases = [
        (paths["missing"], [f"no scores dataset at {paths['missing']}: the path does not exist"]),
        (paths["empty"], [f"no scores dataset at {paths['empty']}: the folder is empty"]),
        (paths["foreign"], [paths["foreign"], "another schema", "city, population"]),
        (paths["file"], [paths["file"], "not Parquet"]),
        (paths["root"], [f"did you mean {paths['scores']}?"]),  # the parent's parent: still found
    ]
    for scores, expect in cases:
        one_line(tool, *run_main(capsys, *_args(tool, scores, out, labels=labels))[::2], *expect)
    if tool != "reparse":  # reparse has no --run-id
        line = one_line(tool, *run_main(capsys, *_args(tool, paths["scores"], out, "vs2-nope", labels))[::2],
                        "run 'vs2-nope' is not in", paths["scores"])
        assert RUN in line  # the runs that are there


def test_dataset_without_rows_and_folder_of_other_files(paths, tmp_path, capsys):
    empty = tmp_path / "norows"
    (empty / f"run_id={RUN}" / "shard_group=g0").mkdir(parents=True)
    pq.write_table(rows_to_table([]).drop_columns(["run_id", "shard_group"]),
                   empty / f"run_id={RUN}" / "shard_group=g0" / "part-0.parquet")
    one_line("report", *run_main(capsys, *_args("report", str(empty), str(tmp_path)))[::2], str(empty), "holds no rows")
    one_line("report", *run_main(capsys, *_args("report", f"{paths['demo']}/tiny-model", str(tmp_path)))[::2],
             "no Parquet files there", "chat_template.jinja")


def test_tool_specific_user_errors(paths, tmp_path, capsys):
    s, out = paths["scores"], str(tmp_path)
    one_line("eval", *run_main(capsys, *_args("eval", s, out, labels=paths["missing"] + ".jsonl"))[::2],
             f"no labels file at {paths['missing']}.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"key": "clip0", "visual_quality": 3}\n{not json\n')
    one_line("eval", *run_main(capsys, *_args("eval", s, out, labels=str(bad)))[::2], str(bad), "not valid JSON lines")
    one_line("filter", *run_main(capsys, "filter", s, f"{out}/k.jsonl", "--where", "nonexistent > 1")[::2],
             "unknown column 'nonexistent'")
    one_line("filter", *run_main(capsys, "filter", s, f"{out}/k.txt", "--where", "visual_quality > 1")[::2],
             "use a .parquet or .jsonl file name")
    one_line("best-of-n", *run_main(capsys, "best-of-n", s, f"{out}/b.parquet", "--group-by", "nope")[::2],
             "--group-by 'nope'", s)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    one_line("reparse", *run_main(capsys, "reparse", s, str(tmp_path / "taken"))[::2], "exists and is not empty")
    one_line("reparse", *run_main(capsys, "reparse", s, f"{s}/inside")[::2], "must not be IN")


# --------------------------------------------------------------------------- scoring, config, pack, models

def test_config_errors_score_submit_demo(paths, tmp_path, capsys):
    bad_yaml = f"{paths['root']}/config-bad-yaml.yaml"
    one_line("score", *run_main(capsys, "score", bad_yaml)[::2], bad_yaml, "is not valid YAML")
    one_line("score", *run_main(capsys, "score", paths["empty"])[::2], paths["empty"], "is a folder")
    one_line("score", *run_main(capsys, "score", "configs/local.yaml", "engine.kindd=vllm")[::2],
             "engine.kindd: unknown key (did you mean engine.kind?)")
    one_line("score", *run_main(capsys, "score", "configs/local.yaml", "decode.actors=lots")[::2],
             "decode.actors:", "'lots'")
    one_line("score", *run_main(capsys, "score", "configs/local.yaml", "no-equals")[::2], "not dotted.key=value")
    shards = f"{paths['missing']}/shard-*.tar"
    one_line("score", *run_main(capsys, "score", "configs/local.yaml", f"input.shards={shards}",
                                f"output.path={tmp_path}/o")[::2], f"no shards match input.shards={shards!r}")
    one_line("score", *run_main(capsys, "score", "configs/local.yaml", f"input.shards={tmp_path}/shard-000000.tar",
                                f"output.path={paths['file']}")[::2], f"output.path {paths['file']} is a file")
    unknown = f"{paths['root']}/config-unknown-key.yaml"
    one_line("submit", *run_main(capsys, "submit", unknown, "--address", "http://127.0.0.1:1")[::2],
             "engine_typo: unknown key")
    one_line("submit", *run_main(capsys, "submit", "configs/local.yaml", "--address", "http://127.0.0.1:1",
                                 "--working-dir", paths["empty"])[::2], paths["empty"], "no jobs/score.py")
    one_line("demo", *run_main(capsys, "demo", "--out", str(tmp_path / "d"), "engine.kindd=x")[::2],
             "engine.kindd: unknown key")
    assert not (tmp_path / "d").exists()  # nothing built before the check


def test_pack_and_tiny_model_errors(paths, tmp_path, capsys):
    one_line("pack", *run_main(capsys, "pack", paths["file"], str(tmp_path / "s"))[::2], paths["file"], "is a file")
    one_line("pack", *run_main(capsys, "pack", paths["empty"], str(tmp_path / "s"))[::2],
             f"no samples found in {paths['empty']}", "manifest.jsonl")
    src = tmp_path / "src"
    src.mkdir()
    (src / "manifest.jsonl").write_text(json.dumps({"file": "gone.mp4", "prompt": "p"}) + "\n")
    one_line("pack", *run_main(capsys, "pack", str(src), str(tmp_path / "s"))[::2], "no file gone.mp4")
    one_line("tiny-model", *run_main(capsys, "tiny-model", paths["demo"])[::2], paths["demo"], "holds other files")


# --------------------------------------------------------------------------- no false rejections

def test_valid_dataset_still_works(paths, tmp_path, capsys):
    """The valid dataset (with _vscore/, _SUCCESS and a *.parquet.tmp beside its Parquet) passes every
    tool, with and without --run-id, and as one Parquet file."""
    s, out = paths["scores"], str(tmp_path)
    for tool in DATASET_TOOLS:  # (the report, slowest, once: with --run-id)
        for run in {"report": (RUN,), "reparse": (None,)}.get(tool, (None, RUN)):
            o = f"{out}/{tool}-{run}"
            code, _, err = run_main(capsys, *_args(tool, s, o, run, paths["labels"]))
            assert code == 0, err
    got = [json.loads(x) for x in Path(f"{out}/filter-{RUN}/kept.jsonl").read_text().splitlines()]
    assert len(got) == sum(r["visual_quality"] >= 3 for r in _rows()) and {g["run_id"] for g in got} == {RUN}
    single = tmp_path / "one.parquet"
    pq.write_table(rows_to_table(_rows()), single)
    for tool in DATASET_TOOLS[1:]:
        code, _, err = run_main(capsys, *_args(tool, str(single), f"{out}/single-{tool}", labels=paths["labels"]))
        assert code == 0, err
    # the reparse output is itself a valid dataset (written with its own _vscore/ summary)
    assert run_main(capsys, *_args("best-of-n", f"{out}/reparse-None/reparsed", f"{out}/again"))[0] == 0


def test_unexpected_errors_keep_their_traceback(monkeypatch, paths):
    """Only UsageError becomes one line: a bug still raises."""
    import pipeline.tools.report as report

    def boom(*a, **k):
        raise KeyError("bug")

    monkeypatch.setattr(report, "write_report", boom)
    with pytest.raises(KeyError):
        main(["report", paths["scores"], "--out", f"{paths['out']}/r.html"])
    shutil.rmtree(paths["out"], ignore_errors=True)
