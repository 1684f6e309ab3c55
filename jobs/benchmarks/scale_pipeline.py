"""The real-pipeline part of `--scale`: read -> decode -> score (FixedOutputEngine) -> sink -> fold/compaction
-> resume, at 10^4..10^6 rows, with input shards and output on the embedded moto S3.

What is real: every stage and every control-plane step of `pipeline.run.job.run` (read tasks over WebDataset
shards on S3, the decode actors, the scoring actor with its score store / in-flight registry, the sink's write
tasks and commit markers, the driver's state folds and compaction (a Ray task), and then a rerun's start-up
in a fresh process). What is made small so that the control plane, not the media, is what is measured:

- the clips: a handful of 28x28 H.264 clips of 2 frames (~1.6 KB each; PyAV decodes one in ~0.6 ms), decoded
  at the model's minimum frame size (`decode.min_pixels = max_pixels = 28*28`, 2 frames per clip); every row
  has its own prompt, so the within-run dedupe (content hash + prompt) scores every row;
- the engine: `FixedOutputEngine` (a fixed answer, no model).

The moto server runs in a child process of its own (kind "moto S3 (bench)" in the CPU table, left out of the
Ray memory sums): its CPU and memory are the storage service's, not the pipeline's.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

from .common import ROOT
from .procs import Poller

# Scoring: the FixedOutputEngine answers at once, so a batch's time in the scoring actor is the control plane's:
# above all one score-store GET and PUT per row (`pipeline.stages.score_cache`, sequential within a batch), and
# the scoring actor is where blocks queue (one actor). 4 batches in flight (the production default is 2, the
# other benchmarks use 1) let those requests overlap; on this loaded 2-core machine the rate was set by the
# load either way (1 in flight: 49 rows/s at load 3.9; 4 in flight: 39 rows/s at load 9.4, 10^4 rows).
SCORE_SETTINGS = ["engine.batches_in_flight=4"]
MICRO_DECODE = ["decode.min_frames=2", "decode.max_frames=2", "decode.min_pixels=784", "decode.max_pixels=784",
                "decode.total_pixels=3136"]
BUCKET = "vscore-scale"
MOTO_KEY_BUFFER_BYTES = 256 * 1024

_MOTO_CHILD = """
import sys, time
from jobs.benchmarks.moto_index import install
install()  # S3-like listing cost (moto's scans the whole bucket): jobs/benchmarks/moto_index.py
from pipeline.dev.s3_server import EmbeddedS3
s3 = EmbeddedS3(buckets=[{bucket!r}]).start()
print("ENDPOINT " + s3.endpoint_url, flush=True)
sys.stdin.read()  # until the parent closes our stdin (or dies)
s3.stop()
"""


class MotoChild:
    """The embedded moto S3 server in a child process (`python -c ... EmbeddedS3 ...`)."""

    def __init__(self, bucket: str = BUCKET) -> None:
        self.bucket = bucket
        self.proc: subprocess.Popen | None = None
        self.endpoint_url = ""

    def __enter__(self) -> "MotoChild":
        from pipeline.dev.s3_server import FAKE_CREDENTIALS

        for k, v in FAKE_CREDENTIALS.items():
            os.environ.setdefault(k, v)
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               # moto keeps an object in memory up to 5 MB (then in a temporary file): the ~3.5 MB input shards of 10^6
               # rows (~3.5 GB) would sit in the server's RAM. A real S3 keeps them on disk; so does this one past 256 KiB.
               "MOTO_S3_DEFAULT_KEY_BUFFER_SIZE": str(MOTO_KEY_BUFFER_BYTES)}
        self.proc = subprocess.Popen([sys.executable, "-c", _MOTO_CHILD.format(bucket=self.bucket)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        line = self.proc.stdout.readline()
        if not line.startswith("ENDPOINT "):
            raise RuntimeError("moto child did not start")
        self.endpoint_url = line.split()[1]
        return self

    def rss_mib(self) -> float:
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss / 2**20 if self.proc else 0.0

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None


def micro_clips(work: Path, count: int = 4) -> list[bytes]:
    """`count` distinct 28x28 H.264 clips of 2 frames at 2 fps (cached under work/clips)."""
    from .clips import encode_clip

    d = work / "clips"
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for seed in range(count):
        p = d / f"micro-28x28-2f-s{seed}.mp4"
        if not p.exists():
            p.with_suffix(".tmp").write_bytes(encode_clip(28, 28, fps=2.0, seconds=1.0, seed=seed, preset="ultrafast"))
            p.with_suffix(".tmp").rename(p)
        out.append(p.read_bytes())
    return out


def micro_shards(work: Path, clips: list[bytes], n: int, shard_size: int) -> Path:
    """n samples (`sNNNNNNN.mp4` + `.json` with a distinct prompt) in local WebDataset shards of `shard_size`."""
    from pipeline.stages.read import SHARD_PATTERN

    dest = work / "shards" / f"micro-{n}-{shard_size}"
    if (dest / "_done").exists():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    for index, start in enumerate(range(0, n, shard_size)):
        with tarfile.open(dest / SHARD_PATTERN.format(index=index), "w") as tar:
            for i in range(start, min(n, start + shard_size)):
                for ext, data in (("mp4", clips[i % len(clips)]),
                                  ("json", json.dumps({"prompt": f"scale benchmark clip {i}"}).encode())):
                    info = tarfile.TarInfo(f"s{i:07d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    (dest / "_done").write_text("ok")
    return dest


def upload(endpoint_url: str, files: list[str], dest: str) -> None:
    """Put the input shards in a child process: s3fs uploads many files at once with a buffer each (~230 MB at
    10^5 rows), memory the allocator keeps, which in this process would count as the driver's."""
    code = "import s3fs, sys; s3fs.S3FileSystem(endpoint_url=sys.argv[1], skip_instance_cache=True).put(sys.argv[3:], sys.argv[2])"
    subprocess.run([sys.executable, "-c", code, endpoint_url, dest, *files], check=True, timeout=3600)


class LoadWatcher(Poller):
    """The machine's 1-minute load average (other sessions share the cores) and the driver's RSS, every 10 s."""

    every = 10.0

    def __init__(self, progress: Path | None = None) -> None:
        super().__init__()
        self.series: list[float] = []
        self.driver_rss_mib: list[int] = []
        self.progress = progress  # a JSON line per poll (time, load, driver RSS, rows scored): kept if the run is cut
        self._stats = None

    def _rows(self) -> int | None:
        import ray

        if not ray.is_initialized():
            return None
        try:
            if self._stats is None:
                names = [a["name"] if isinstance(a, dict) else a for a in ray.util.list_named_actors()]
                name = next((x for x in names if str(x).startswith("vscore-stats-")), None)
                self._stats = ray.get_actor(name) if name else None
            return int(ray.get(self._stats.snapshot.remote(), timeout=5).get("rows_scored", 0)) if self._stats else None
        except Exception:  # noqa: BLE001 - the actor is gone at the end of the run
            self._stats = None
            return None

    def poll(self) -> None:
        self.series.append(round(os.getloadavg()[0], 2))
        with open("/proc/self/statm") as f:
            self.driver_rss_mib.append(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 2**20)
        if self.progress is not None:
            with open(self.progress, "a") as f:
                f.write(json.dumps({"t": round(time.time(), 1), "load1": self.series[-1], "driver_rss_mib": self.driver_rss_mib[-1],
                                    "rows_scored": self._rows()}) + "\n")

    def summary(self) -> dict[str, Any]:
        s = self.series or [round(os.getloadavg()[0], 2)]
        return {"min": min(s), "mean": round(sum(s) / len(s), 2), "max": max(s), "samples": len(s)}


def count_objects(fs: Any, root: str) -> dict[str, int]:
    """Objects under the output: data files, and the _vscore folders by name (one listing per top-level folder)."""
    out: dict[str, int] = {}
    for entry in fs.ls(root, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if name == "_vscore":
            for sub in fs.ls(entry, detail=False):
                out["_vscore/" + sub.rstrip("/").rsplit("/", 1)[-1]] = len(fs.find(sub))
        else:
            for p in fs.find(entry):
                k = "parquet files" if p.endswith(".parquet") else "other"
                out[k] = out.get(k, 0) + 1
    return out


CONTROL_KINDS_EXCLUDED = ("decode actors", "moto S3 (bench)")


def cpu_per_row(cpu: dict[str, float], n: int) -> dict[str, float]:
    """ms of CPU per row by process kind (user+sys), and the control plane's total (everything but the decode
    actors and the storage server)."""
    kinds = {k: v for k, v in cpu.items() if not k.endswith(" (sys)")}
    per = {k: round(1000 * v / n, 3) for k, v in sorted(kinds.items(), key=lambda x: -x[1])}
    per["control plane (all but decode actors and moto)"] = round(
        1000 * sum(v for k, v in kinds.items() if k not in CONTROL_KINDS_EXCLUDED) / n, 3)
    return per


def bench_pipeline(sizes: list[int], args: argparse.Namespace, work: Path, child_resume: Any) -> dict[str, Any]:
    import ray

    from pipeline.run.job import run

    from .procs import ProcSampler
    from .runner import Runner, pipeline_config

    clips = micro_clips(work)
    runner = Runner(work, list(getattr(args, "pipeline_set", [])))  # init_ray sees --pipeline-set (ray.*)
    out: dict[str, Any] = {}
    on_s3 = getattr(args, "scale_pipeline_backend", "s3") == "s3"
    moto: MotoChild | None = None
    try:
        for n in sizes:
            t = time.perf_counter()
            if on_s3:  # a fresh server per size: its memory and listings hold this size's objects only
                moto = MotoChild().__enter__()
            local = micro_shards(work, clips, n, args.scale_shard_size)
            storage: list[str] = []
            if moto is not None:
                import s3fs

                fs = s3fs.S3FileSystem(endpoint_url=moto.endpoint_url, skip_instance_cache=True)
                prefix = f"{BUCKET}/shards-{n}-{os.getpid()}"
                upload(moto.endpoint_url, sorted(str(p) for p in local.glob("shard-*.tar")), prefix + "/")
                shards, dest = f"s3://{prefix}/shard-*.tar", f"s3://{BUCKET}/out-{n}-{os.getpid()}"
                storage = [f"input.storage.endpoint_url={moto.endpoint_url}", f"output.storage.endpoint_url={moto.endpoint_url}"]
            else:
                import shutil

                shards, dest = str(local / "shard-*.tar"), str(work / "out" / f"scale-{n}")
                shutil.rmtree(dest, ignore_errors=True)
                fs = None
            prep_s = time.perf_counter() - t
            if runner.ray_init_s is None:
                runner.init_ray(str(local / "shard-*.tar"))
            cfg = pipeline_config(shards, dest, ["output.min_rows_per_file=64", *MICRO_DECODE, *SCORE_SETTINGS, *storage,
                                                 *getattr(args, "pipeline_set", [])])
            load = LoadWatcher(work / f"scale-pipeline-{n}-{'s3' if on_s3 else 'local'}.progress.jsonl")
            load_before = os.getloadavg()[0]
            with ProcSampler(every=1.0, pss_every=8) as s, load:
                t = time.perf_counter()
                summary = run(cfg, progress_every_s=3600)
                wall = time.perf_counter() - t
            if summary["rows_out"] != n or summary["errors"] or summary.get("duplicates"):
                raise RuntimeError(f"scale run lost rows, had errors or dedupe hits: {summary}")
            if fs is None:
                from pipeline.storage import filesystem

                fs, root = filesystem(dest, cfg.output.storage)
            else:
                root = dest.split("://", 1)[1]
            objects = count_objects(fs, root)
            resume_start = child_resume(json.loads(cfg.model_dump_json()))
            r = {"rows": summary["rows_out"], "wall_s": round(wall, 1), "vps": round(n / wall, 2), "prepare_s": round(prep_s, 1),
                 "driver_rss_peak_mib": round(s.peak.get("driver_rss", 0) / 2**20),
                 "ray_rss_sum_peak_mib": round(s.peak.get("others_rss_sum", 0) / 2**20),
                 "ray_private_sum_peak_mib": round(s.peak.get("others_private_sum", 0) / 2**20),
                 "ray_pss_sum_peak_mib": round(s.peak.get("pss_sum", 0) / 2**20),
                 "ray_rss_by_kind_at_peak_mib": {k: round(v / 2**20) for k, v in sorted(s.peak_by_kind.items(), key=lambda x: -x[1])},
                 "moto_rss_mib_after": round(moto.rss_mib()) if moto is not None else None,
                 "files": objects.get("parquet files", 0), "objects": objects, "cpu": s.cpu,
                 "cpu_ms_per_row": cpu_per_row(s.cpu, n),
                 "driver_cpu_per_row_ms": round(1000 * s.cpu.get("driver", 0.0) / n, 3),
                 "resume": resume_start, "load1": {"before": round(load_before, 2), **load.summary()},
                 "driver_rss_series_mib_every_10s": load.driver_rss_mib,
                 "backend": "s3 (moto, child process)" if moto is not None else "local"}
            out[str(n)] = r
            (work / f"scale-pipeline-{n}-{r['backend'].split()[0]}.json").write_text(json.dumps(r))  # kept if a later, larger size fails
            print(f"[bench] scale pipeline {n}: {r['vps']} videos/s, driver RSS peak {r['driver_rss_peak_mib']} MiB, Ray RSS sum "
                  f"{r['ray_rss_sum_peak_mib']} MiB (PSS {r['ray_pss_sum_peak_mib']}), {r['files']} files, objects {objects}, "
                  f"driver CPU {r['driver_cpu_per_row_ms']} ms/row, control plane "
                  f"{r['cpu_ms_per_row']['control plane (all but decode actors and moto)']} ms/row, resume start-up "
                  f"{resume_start['startup_s']} s (+{resume_start['rss_peak_added_mb']} MB), load {r['load1']}", flush=True)
            if moto is None:
                import shutil

                shutil.rmtree(dest, ignore_errors=True)
            else:
                moto.__exit__(None, None, None)
                moto = None
    finally:
        runner.close()
        if moto is not None:
            moto.__exit__(None, None, None)
    del ray
    return out
