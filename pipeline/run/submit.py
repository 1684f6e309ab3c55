"""`vscore submit`: run `jobs/score.py CONFIG` on a Ray cluster through Ray's Jobs API.

This is `ray job submit --working-dir . --runtime-env-json ... -- python jobs/score.py CONFIG ...` done
with `ray.job_submission.JobSubmissionClient` (the same client the `ray job` CLI uses): the working
directory is zipped and uploaded (big local folders excluded), the job id is printed, the driver's logs
are followed over the dashboard's websocket, and the job's final status becomes the exit status
(0 = SUCCEEDED, 1 = FAILED, 2 = STOPPED, 3 = still running when we stopped following). A usage error
(missing or invalid config, no address, wrong working dir) is also 2, with one line on stderr and nothing
submitted.

The config is validated here, before anything is uploaded, so a typo fails in a second instead of after
the job has started on the cluster. The config path is passed to the job relative to the working dir,
so it must lie inside it (it travels with the upload).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from pipeline.errors import UsageError

log = logging.getLogger("vscore.submit")

# Never uploaded with the working dir (on top of .gitignore, which Ray honours too): the venv, caches,
# scratch and demo outputs, git objects. Patterns are gitignore-style, relative to the working dir.
DEFAULT_EXCLUDES = [".venv/", "venv/", ".git/", "cache/", "tmp/", "vscore-demo/", "out/", "__pycache__/",
                    "*.pyc", ".pytest_cache/", "*.egg-info/"]
# Set for the job's driver and every worker it starts (offline hubs, quiet tokenizers, no telemetry).
DEFAULT_ENV_VARS = {"TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0"}

EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 2}
EXIT_NOT_FINISHED = 3


def is_loopback(address: str) -> bool:
    host = urlparse(address if "://" in address else f"http://{address}").hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def build_entrypoint(config_rel: str, overrides: list[str], python: str) -> str:
    """The job's shell command: `<python> jobs/score.py CONFIG overrides...`, every part quoted."""
    return " ".join(shlex.quote(p) for p in [python, "jobs/score.py", config_rel, *overrides])


def build_runtime_env(working_dir: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """working_dir + excludes + env vars, with a user's `--runtime-env-json` merged on top (its env_vars
    and excludes are added to ours; any other key replaces ours)."""
    env: dict[str, Any] = {"working_dir": str(working_dir), "excludes": list(DEFAULT_EXCLUDES),
                           "env_vars": dict(DEFAULT_ENV_VARS)}
    for key, value in (extra or {}).items():
        if key == "env_vars":
            env["env_vars"].update({str(k): str(v) for k, v in value.items()})
        elif key == "excludes":
            env["excludes"] = list(dict.fromkeys([*env["excludes"], *value]))
        else:
            env[key] = value
    return env


def config_relative_to(config: str | Path, working_dir: Path) -> str:
    path = Path(config).resolve()
    try:
        return path.relative_to(working_dir.resolve()).as_posix()
    except ValueError:
        raise UsageError(f"config {config} is outside the working dir {working_dir}: it must travel with the "
                         f"upload (put it under {working_dir} or pass --working-dir)") from None


def submit(config: str | Path, overrides: list[str], address: str | None, working_dir: str | Path = ".",
           runtime_env: dict[str, Any] | None = None, python: str | None = None, follow: bool = True,
           submission_id: str | None = None, entrypoint_num_cpus: float | None = None,
           out: Callable[[str], None] | None = None, timeout_s: float | None = None) -> tuple[str, int]:
    """Submit the scoring job; return (job id, exit status). With `follow`, stream the driver's logs to
    `out` (stdout by default) until the job ends; without, return right after submission with status 0."""
    from pipeline.config import load_config

    write = out or (lambda s: (sys.stdout.write(s), sys.stdout.flush()))
    cfg = load_config(config, overrides)  # fail fast on a bad config, before uploading anything
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not address:
        raise UsageError("no cluster address: pass --address http://HEAD:8265 or set RAY_ADDRESS")
    wd = Path(working_dir).resolve()
    if not (wd / "jobs" / "score.py").exists():
        raise UsageError(f"--working-dir {working_dir}: no jobs/score.py there; expected the vscore checkout")
    rel = config_relative_to(config, wd)

    from ray.job_submission import JobSubmissionClient

    if python is None:
        # On this machine the job must use this interpreter (the venv); on a cluster, the image's python.
        python = sys.executable if is_loopback(address) else "python"
    entrypoint = build_entrypoint(rel, list(overrides), python)
    env = build_runtime_env(wd, runtime_env)
    client = JobSubmissionClient(address)
    job_id = client.submit_job(entrypoint=entrypoint, runtime_env=env, submission_id=submission_id,
                               entrypoint_num_cpus=entrypoint_num_cpus,
                               metadata={"vscore_config": rel, "vscore_run_id": cfg.resolved_run_id()})
    print(f"submitted job {job_id} to {address}", file=sys.stderr)
    print(job_id, flush=True)
    print(f"  entrypoint: {entrypoint}", file=sys.stderr)
    print(f"  logs:  ray job logs --address {address} --follow {job_id}", file=sys.stderr)
    print(f"  stop:  ray job stop --address {address} {job_id}", file=sys.stderr)
    if not follow:
        return job_id, 0
    return job_id, follow_job(client, job_id, write, timeout_s=timeout_s)


def follow_job(client: Any, job_id: str, write: Callable[[str], None], timeout_s: float | None = None,
               poll_s: float = 1.0) -> int:
    """Stream the job's logs until it ends, then map its final status to an exit code."""

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)

    t0 = time.time()
    try:
        asyncio.run(asyncio.wait_for(tail(), timeout=timeout_s))
    except (asyncio.TimeoutError, TimeoutError):
        print(f"stopped following job {job_id} after {timeout_s} s; it keeps running", file=sys.stderr)
        return EXIT_NOT_FINISHED
    except KeyboardInterrupt:
        print(f"\nstopped following; job {job_id} keeps running (ray job stop {job_id} to stop it)", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the websocket broke: fall back to polling the status
        log.warning("log stream for %s broke (%s); polling its status instead", job_id, e)
    # The websocket closes when the driver exits; the recorded status can lag a moment behind.
    while True:
        info = client.get_job_info(job_id)
        status = str(info.status)
        if status in EXIT_CODES:
            break
        if timeout_s is not None and time.time() - t0 > timeout_s:
            return EXIT_NOT_FINISHED
        time.sleep(poll_s)
    code = EXIT_CODES[status]
    extra = f", driver exit code {info.driver_exit_code}" if getattr(info, "driver_exit_code", None) is not None else ""
    print(f"job {job_id} {status}{extra}: {info.message or ''}".rstrip(": "), file=sys.stderr)
    return code


def parse_runtime_env_json(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    if os.path.exists(text):  # a file holding the JSON is accepted too
        text = Path(text).read_text()
    try:
        value = json.loads(text)
    except ValueError as e:
        raise UsageError(f"--runtime-env-json: not JSON, nor a file holding it ({e})") from None
    if not isinstance(value, dict):
        raise UsageError("--runtime-env-json must be a JSON object")
    return value
