"""vscore benchmark (not a test): each figure is a ratio measured side by side in one run.

    python jobs/bench.py --quick                 # < 5 min on 2 cores; prints the ratio table
    python jobs/bench.py                         # the full run (more clips, reps, 1k/10k memory runs)
    python jobs/bench.py --out bench/results.md  # where the results are appended (default; --no-write: don't)
    python jobs/bench.py --gpu                   # GPU engines (random-init full-size Qwen2.5-VL-7B); needs CUDA

Sections of the default mode (`--sections decode,pipeline,memory`):

1. decode, per core (the child process is pinned with `taskset -c 0`; one decoder thread; torch 1 thread):
   vscore `decode_video` (open, probe, decode, convert+resize only the kept frames) vs
   `ffmpeg -threads 1 -i clip -map 0:v:0 -f null -` (Debian's FFmpeg CLI: the practical floor; its
   `-benchmark` utime+stime covers the decode loop, not the process start or the container probe) vs
   qwen-vl-utils `fetch_video({"video": path, "fps": 2.0})` with the decord reader (what the official
   script runs). Also: PyAV decode-all-frames-no-conversion (our decoder's own floor) and, in the full run,
   `skip_frame=NONREF` (not frame-exact; shows what skipping non-reference frames could save).
   Clip sets: the real clips (../shared/data/videos, else samples/videos) and generated 5 s clips at 480p
   and 720p (24 fps, x264 preset medium, crf 23, default GOP 250 with B-frames, camera-pan texture).
   Primary figure: videos per CPU-second (load-robust); wall-clock rates on the pinned core are also kept.
2. pipeline overhead: `pipeline.run.job.run` (local shards, FixedOutputEngine: zero-cost benchmark engine,
   2 CPUs) vs decode alone (`decode_video` in a 2-process pool over the same samples), interleaved.
   Steady state = the marginal rate between a small and a large run (start-up cancels); start-up =
   ray.init (once) and each run's wall minus N / steady rate. CPU-seconds per video by process kind
   (sampled with psutil) say where the overhead goes.
3. memory: peak RSS (and PSS) of the driver and of all Ray processes at two sizes of tiny synthetic
   clips (quick: 200/1000, full: 1000/10000): flat = streaming.
4. GPU (`--gpu`, needs CUDA): a mode of its own, see `benchmarks.gpu.bench_gpu`.

Before each section the bench waits (up to --max-wait s) for the 1-minute load average to fall below
--load-threshold, and records the load it ran under.

Layout (jobs/benchmarks/; `jobs/bench.py` is the entry point):
  cli.py       arguments and main          modes.py    the mode registry (adding a mode: see there)
  cpu.py       mode cpu (default)          gpu.py      mode gpu (--gpu, --gpu-dry-cpu)
  decode.py    section decode              overhead.py section pipeline (variants)
  memory.py    section memory              runner.py   Runner, pipeline config, sample packing
  procs.py     process sampling            clips.py    real and generated clips
  common.py    paths, machine, load, stats report.py   ratio table, results writing
  soak.py      mode soak (--soak): memory over a 60-minute run, sampled each minute
"""
