"""Security basics: credentials never reach logs, the summary, commit markers or Parquet; URLs inside
sample metadata are never fetched; output paths come only from config (keys are never paths)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

from pipeline.dev.s3_server import EmbeddedS3
from pipeline.stages.read import tar_bytes

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples" / "videos"
SECRET = "vsSECRETkey0123456789SHOULDNEVERLEAK"


def test_no_credential_leak_no_fetch_no_path_injection(tmp_path):
    hits = []

    class Trap(BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a):
            pass

    trap = ThreadingHTTPServer(("127.0.0.1", 0), Trap)
    threading.Thread(target=trap.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{trap.server_address[1]}/steal"
    vid = (SAMPLES / json.loads((SAMPLES / "manifest.jsonl").read_text().splitlines()[0])["file"]).read_bytes()
    members = [
        ("a.mp4", vid), ("a.json", json.dumps({"prompt": "p", "video_url": url, "source": "file:///etc/passwd"}).encode()),
        ("../../escape/b.mp4", vid), ("../../escape/b.json", json.dumps({"prompt": "q", "video": url}).encode()),
        ("/abs/c.mp4", vid), ("/abs/c.json", b'{"prompt": "r"}'),
    ]
    env = dict(os.environ, AWS_ACCESS_KEY_ID="AKIAVSCORETEST", AWS_SECRET_ACCESS_KEY=SECRET,
               AWS_DEFAULT_REGION="us-east-1", RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
               RAY_TMPDIR=str(Path("/tmp") / f"vss-{os.getpid()}"))
    env.pop("RAY_ADDRESS", None)
    old = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ.update(AWS_ACCESS_KEY_ID="AKIAVSCORETEST", AWS_SECRET_ACCESS_KEY=SECRET)
    try:
        with EmbeddedS3(buckets=["vscore-sec"]) as s3:
            fs = s3.filesystem()
            fs.pipe("vscore-sec/shards/shard-000000.tar", tar_bytes(members))
            out = tmp_path / "out"
            cfg = {
                "input": {"shards": "s3://vscore-sec/shards/*.tar", "storage": {"endpoint_url": s3.endpoint_url}},
                "decode": {"actors": 1, "num_cpus": 0.25, "max_pixels": 50176, "min_pixels": 3136},
                "engine": {"kind": "pipeline.engines.fixed:FixedOutputEngine", "num_gpus": 0, "num_cpus": 0.25,
                           "batches_in_flight": 1},
                "output": {"path": str(out)},
                "ray": {"progress_bars": False, "num_cpus": 2, "object_store_memory": 268435456},
            }
            (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
            proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "score", str(tmp_path / "cfg.yaml")], cwd=REPO,
                                  env=env, capture_output=True, text=True, timeout=600)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        trap.shutdown()
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = proc.stdout + proc.stderr
    assert SECRET not in logs
    for f in out.rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert summary["rows_out"] == 3 and SECRET not in json.dumps(summary)
    assert hits == []  # no URL from metadata was fetched
    # keys are data: nothing was written outside the configured output, and no path uses a key
    assert not (tmp_path / "escape").exists() and not Path("/abs").exists()
    written = {p.relative_to(out).parts[0] for p in out.rglob("*.parquet")}
    assert written <= {f"run_id={summary['run_id']}"}
