"""`vscore plan --videos N --hours H [--clip 5s@480p] [--gpu h100] ...`: GPUs, decode cores and nodes for a
job, from the measured constants in `pipeline/tools/sizing.py` (not the runtime actor plan of
`pipeline/run/plan.py`). Invalid input: one line on stderr, exit 2."""

from __future__ import annotations

import argparse
import json


def run(a: argparse.Namespace) -> int:
    from pipeline.tools.sizing import format_sizing, make_job, size_job

    # bad input raises SizingError, a UsageError: pipeline/cli.py prints it as one line and exits 2
    sizing = size_job(make_job(a.videos, a.hours, clip=a.clip, gpu=a.gpu, gpu_videos_per_s=a.gpu_videos_per_s,
                               gpus_per_node=a.gpus_per_node, decode_cores_per_node=a.decode_cores_per_node,
                               skip_nonref=a.skip_nonref))
    print(json.dumps(sizing.to_dict(), indent=2) if a.json else format_sizing(sizing))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("plan", help="sizing calculator: GPUs, decode cores and nodes to score N videos in H hours",
                        description="Size a scoring job from the measured decode rates (docs/performance.md) and an "
                                    "explicit, labelled GPU-rate assumption (until GPUs are measured). Prints the "
                                    "resource terms, the totals, the assumptions and what is not measured yet.")
    # values are parsed by pipeline.tools.sizing so that bad input is one line on stderr and exit 2
    sp.add_argument("--videos", required=True, help="videos to score")
    sp.add_argument("--hours", required=True, help="wall-clock hours for the job")
    sp.add_argument("--clip", default="5s@480p",
                    help="typical clip: DURATION@RESOLUTION[@FPSfps], e.g. 5s@480p, 10s@720p, 10s@1080p@30fps, "
                         "8s@832x480 (24 fps unless given), or 'real' for the measured real-clip mix (default 5s@480p)")
    sp.add_argument("--gpu", default="h100", help="h100, h200 or a100 (default h100)")
    sp.add_argument("--gpu-videos-per-s", default=None,
                    help="measured videos/s per GPU for this clip; replaces the assumed rate")
    sp.add_argument("--gpus-per-node", default="8", help="GPUs per node (default 8)")
    sp.add_argument("--decode-cores-per-node", default="16",
                    help="CPU cores per node available to decode actors (default 16)")
    sp.add_argument("--skip-nonref", action=argparse.BooleanOptionalAction, default=True,
                    help="size for decode.skip_nonref (the default, H.264: ~1.2-1.3x decode); --no-skip-nonref sizes "
                         "the full decode (decode.skip_nonref: false, or codecs it does not cover)")
    sp.add_argument("--json", action="store_true", help="print the sizing as JSON")
    sp.set_defaults(fn=run)
