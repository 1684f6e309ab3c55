"""Pre-processed video for vLLM: the Hugging Face video processor off the scoring actor's critical path.

vLLM's front-end (in our scoring actor's process) normally runs transformers' Qwen2-VL video processor on
every video before the request reaches the engine core (23-27 ms of CPU per 5 s 480p video, ~100 ms at 10 s
720p: docs/performance.md, "Feeding the GPU"). vLLM 0.32 has no request field for pre-processed
`pixel_values_videos` (its dict inputs for Qwen2.5-VL are embeddings only, `Qwen2VLMultiModalDataParser`,
behind `enable_mm_embeds`), but it has two supported pieces this builds on:

- `AsyncLLM.generate` takes an already rendered `EngineInput` (the output of the renderer, "the raw-prompt
  path is deprecated": vllm/v1/engine/async_llm.py `generate`), and
- the engine's own multimodal processor (`renderer.get_mm_processor()`, here vLLM's
  `Qwen2_5_VLMultiModalProcessor`) passes through, without calling the HF processor, any data item whose
  `get_passthrough_data()` is non-empty (`BaseMultiModalProcessor._get_hf_mm_inputs` /
  `_cached_apply_hf_processor`; that is how its embedding items work).

So `VideoPassThrough.engine_input` builds one `PatchedVideo` item holding the tensors the HF processor would
have produced (our numpy `patchify`, pipeline/vs2/processor.py, or the `Patches` the decode stage already made with
`decode.patchify`, wrapped as they are: then the scoring actor does no per-pixel work) and runs the engine's own
processor on it:
vLLM itself tokenizes the prompt, builds the field configs, expands the video placeholder from
`video_grid_thw` and computes the multimodal hash from our UUID, exactly as on the official path. No model or
processor is registered, nothing is patched, and the engine-core process needs nothing (it never processes
requests, it receives the processed tensors).

Identical model input (tests/test_vllm_video.py, against vLLM's own raw-prompt path on real clips): with
`mm_device_do_normalize` (vLLM's default for Qwen2.5-VL) vLLM calls the HF processor with rescale and
normalize off, so the model receives uint8 patches and normalizes on the device: we pass the same uint8
patches. With device normalization off the HF processor's float32 rescale + normalize is reproduced
(`normalize`, byte-identical) and cast to the model dtype as vLLM casts every floating processor output.
`second_per_grid_ts` is the HF processor's `temporal_patch_size / fps` of the nominal metadata, as float32,
then cast the same way.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping

import numpy as np
import torch
from vllm.multimodal.parse import ModalityDataItems, MultiModalDataItems

from pipeline.vs2.processor import Patches, VideoProcessorSettings, normalize, patchify


def _tensor(a: np.ndarray) -> torch.Tensor:
    """A tensor sharing `a`'s memory. Patches from a Ray batch are read-only views of the object store block: vLLM only
    reads (serializes) them, so torch's warning about non-writable arrays does not apply."""
    if a.flags.writeable:
        return torch.from_numpy(a)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(a)


class PatchedVideo(ModalityDataItems[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]]):
    """One video as the HF processor's outputs (`pixel_values_videos`, `video_grid_thw`, `second_per_grid_ts`):
    vLLM's processor passes it to the model as it is (no processor data, all passthrough data)."""

    def __init__(self, data: Mapping[str, torch.Tensor]) -> None:
        if tuple(data["video_grid_thw"].shape) != (1, 3):
            raise ValueError(f"one video per item, got video_grid_thw {tuple(data['video_grid_thw'].shape)}")
        super().__init__(data, "video")

    def get_count(self) -> int:
        return 1

    def get(self, index: int) -> Mapping[str, torch.Tensor]:
        if index != 0:
            raise IndexError(index)
        return self.data

    def get_processor_data(self) -> Mapping[str, object]:
        return {}

    def get_passthrough_data(self) -> Mapping[str, object]:
        return self.data


class VideoPassThrough:
    """Rendered vLLM inputs (`EngineInput`) for chat prompts with one pre-processed video, through the engine's own
    multimodal processor (`renderer`: `AsyncLLM.renderer` / `LLM.renderer`)."""

    def __init__(self, renderer: Any, settings: VideoProcessorSettings, video_fps: float,
                 mm_processor_kwargs: Mapping[str, Any]) -> None:
        from vllm.model_executor.models.qwen2_5_vl import Qwen2_5_VLMultiModalProcessor

        self.processor = renderer.get_mm_processor()
        if not isinstance(self.processor, Qwen2_5_VLMultiModalProcessor):  # the tensors below are Qwen2.5-VL's
            raise ValueError(f"engine.video_processor=numpy supports Qwen2.5-VL checkpoints, this one is processed by "
                             f"{type(self.processor).__name__}: set engine.video_processor=hf")
        model_config = self.processor.info.ctx.model_config
        mm_config = model_config.get_multimodal_config()
        self.device_normalize = bool(mm_config.mm_device_do_normalize)
        self.dtype = model_config.dtype
        self.settings = settings
        # what transformers' Qwen2_5_VLProcessor derives from the metadata (`temporal_patch_size / sampled_fps`)
        self.second_per_grid = settings.temporal_patch_size / float(video_fps)
        self.mm_processor_kwargs = dict(mm_processor_kwargs)  # same kwargs as the official path: same mm hash

    def takes(self, patches: Patches) -> bool:
        """Whether `patches` (made elsewhere, e.g. by the decode stage) have this checkpoint's patch geometry."""
        return patches.same_layout(self.settings)

    def tensors(self, video: np.ndarray | Patches) -> dict[str, torch.Tensor]:
        """The HF processor's outputs for a video, as vLLM's front-end would hand them on: `video` is (T, H, W, 3)
        uint8 frames (patchified here) or `Patches` made by the decode stage (used as they are)."""
        if isinstance(video, Patches) and not self.takes(video):  # another geometry: back to frames (exact), re-patchify
            video = video.frames()
        if isinstance(video, Patches):
            patches, grid = video.data, video.grid
        else:
            patches, grid = patchify(video, self.settings)
        if self.device_normalize:  # the model normalizes on the device: raw bytes, as vLLM's HF call returns them
            pixel_values = _tensor(patches)
        else:  # HF float32 rescale + normalize, then vLLM's cast of floating outputs to the model dtype
            pixel_values = torch.from_numpy(normalize(patches, self.settings)).to(self.dtype)
        seconds = torch.tensor([self.second_per_grid], dtype=torch.float32).to(self.dtype)
        return {"pixel_values_videos": pixel_values, "video_grid_thw": torch.from_numpy(grid),
                "second_per_grid_ts": seconds}

    def engine_input(self, prompt: str, video: np.ndarray | Patches, video_uuid: str | None) -> dict[str, Any]:
        """vLLM's `MultiModalInput` for a chat prompt holding one `<|video_pad|>` and its video (frames or patches)."""
        items = MultiModalDataItems({"video": PatchedVideo(self.tensors(video))})
        uuids = {"video": [video_uuid]} if video_uuid else None
        out = self.processor(prompt, items, uuids, hf_processor_mm_kwargs=self.mm_processor_kwargs)
        out["prompt"] = prompt  # as the renderer sets it (RequestOutput.prompt)
        return out
