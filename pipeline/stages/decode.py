"""Decode stage: a Ray Data actor that turns a batch of read rows (with `video` bytes) into the same rows
with frames, using `pipeline.video.decode.decode_video` (`map_batches(DecodeStage, fn_constructor_args=(cfg,),
compute=ActorPoolStrategy(...), batch_format="numpy")`). A decode failure becomes an error row.

Each decoded clip also gets its probe facts and cheap signals (`pipeline.video.signals`, measured on the frames
just decoded: no second pass), and then meets the prefilter (`pipeline.stages.prefilter`): a clip that fails it
leaves with status "skipped" and no frames, so it never reaches the scoring stage's engine."""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.config import DecodeConfig, PrefilterConfig
from pipeline.schema import PREFILTER_STAGE, SIGNAL_COLUMNS, one_line
from pipeline.stages.prefilter import Prefilter
from pipeline.video.decode import DecodeError, decode_video
from pipeline.video.signals import compute_signals
from pipeline.video.seek import decode_span
from pipeline.vs2.processor import Patches


_EMPTY_FRAMES_SHAPE = (0, 0, 0, 3)


def _str_or_none(v: Any) -> str | None:
    """A string cell from a numpy batch. Ray hands an all-null column over as float NaN: that is None."""
    v = v.item() if isinstance(v, np.generic) else v
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return v if isinstance(v, str) else None


def _float_or_none(v: Any) -> float | None:
    """A float cell from a numpy batch: null arrives as NaN (or None)."""
    v = v.item() if isinstance(v, np.generic) else v
    if v is None or isinstance(v, (str, bytes)):
        return None
    v = float(v)
    return None if v != v else v


def _frames_type(ndim: int = 4) -> pa.DataType:
    from ray.data.extensions import ArrowVariableShapedTensorType

    return ArrowVariableShapedTensorType(dtype=pa.uint8(), ndim=ndim)


class DecodeStage:
    """Ray Data callable class: a batch of read rows (with `video` bytes) -> the same rows with frames.

    Input: a numpy batch (`batch_format="numpy"`) with INPUT_COLUMNS. Output: a pyarrow Table with exactly
    OUTPUT_COLUMNS (types in `output_types()`); `video` is dropped. `frames` is always an Arrow
    variable-shaped uint8 tensor column (ndim 4), also when every clip of a batch has the same size, so all
    blocks share one schema; downstream numpy batches get it back as an object array of (T, H, W, 3) arrays.

    Rows whose status is not "ok" pass through untouched, with empty (0, 0, 0, 3) frames, zero numbers and null
    probe/signal columns; a decode failure makes the row status "error", error_stage "decode", error "<one line>".
    A decoded row that fails the prefilter becomes status "skipped", error_stage "prefilter", error = the failed
    condition(s), with empty frames (its probe and signal columns stay). `src_fps`/`total_frames` (0 when not
    decoded) feed the engine's video metadata; `fps`/`src_frames` are the same facts as output columns (null).

    With `patchify` (`decode.patchify`, on when the engine takes patches: `ScoreConfig.decode_patchify`) a decoded
    row ships its frames in the HF patch layout instead (`patches`, uint8 (grid_t*grid_h*grid_w, 1176): the same
    bytes, permuted, `pipeline.vs2.processor.Patches`) and `frames` is empty; signals and the prefilter still see the
    frames. Without it `patches` is empty (0, 1176). Never both: the bytes in transit stay one copy of the frames.
    """

    PASS_THROUGH = ("row_id", "key", "shard", "shard_group", "prompt", "meta_json", "source_url", "content_hash")
    SPAN_COLUMNS = ("start_s", "end_s")  # floats, passed through; a row with either decodes that span of its video
    INPUT_COLUMNS = PASS_THROUGH + SPAN_COLUMNS + ("video", "status", "error_stage", "error")
    OUTPUT_COLUMNS = PASS_THROUGH + SPAN_COLUMNS + ("status", "error_stage", "error", "frames", "patches", "frame_indices", "num_frames",
                                                    "width", "height", "duration_s", "src_fps", "total_frames", "decode_s",
                                                    "fps", "src_width", "src_height", "src_frames") + SIGNAL_COLUMNS

    def __init__(self, cfg: DecodeConfig, prefilter: PrefilterConfig | None = None, patchify: bool = False) -> None:
        self.cfg = cfg
        self.prefilter = Prefilter(prefilter)
        self.patchify = bool(patchify)

    @staticmethod
    def output_types() -> dict[str, pa.DataType]:
        types = {c: pa.string() for c in DecodeStage.PASS_THROUGH + ("status", "error_stage", "error", "frame_indices")}
        types.update(start_s=pa.float64(), end_s=pa.float64(), frames=_frames_type(), patches=_frames_type(2),
                     num_frames=pa.int32(), width=pa.int32(),
                     height=pa.int32(), duration_s=pa.float64(), src_fps=pa.float64(), total_frames=pa.int64(), decode_s=pa.float64(),
                     fps=pa.float64(), src_width=pa.int32(), src_height=pa.int32(), src_frames=pa.int64(),
                     motion=pa.float64(), flicker=pa.float64(), blank_fraction=pa.float64(), sharpness=pa.float64(),
                     phash=pa.string())
        return {c: types[c] for c in DecodeStage.OUTPUT_COLUMNS}

    @staticmethod
    def empty_frames() -> np.ndarray:
        return np.zeros(_EMPTY_FRAMES_SHAPE, dtype=np.uint8)

    @staticmethod
    def empty_patches() -> np.ndarray:
        return np.zeros((0, 3 * Patches.temporal_patch_size * Patches.patch_size ** 2), dtype=np.uint8)

    def decode_row(self, video: Any, status: str, error_stage: str | None, error: str | None,
                   span: tuple[float | None, float | None] = (None, None)) -> dict[str, Any]:
        """Output fields (all but the pass-through ones) for one row; `span` = (start_s, end_s) of a clip."""
        res: dict[str, Any] = {"status": status, "error_stage": error_stage, "error": error,
                               "frames": self.empty_frames(), "patches": self.empty_patches(), "frame_indices": "", "num_frames": 0,
                               "width": 0, "height": 0, "duration_s": 0.0, "src_fps": 0.0, "total_frames": 0,
                               "decode_s": 0.0, "fps": None, "src_width": None, "src_height": None, "src_frames": None,
                               **{c: None for c in SIGNAL_COLUMNS}}
        if status != "ok":
            return res
        t0 = time.perf_counter()
        try:
            data = bytes(video) if isinstance(video, (bytes, bytearray, memoryview, np.ndarray)) else b""
            dv = decode_span(data, self.cfg, *span) if span != (None, None) else decode_video(data, self.cfg)
        except DecodeError as e:
            res.update(status="error", error_stage="decode", error=str(e))
        except Exception as e:  # noqa: BLE001 - a bug must not kill the whole batch; it becomes an error row
            res.update(status="error", error_stage="decode", error=one_line(e))
        else:
            res.update(frames=dv.frames, frame_indices=json.dumps(dv.indices), num_frames=int(dv.frames.shape[0]),
                       width=dv.width, height=dv.height, duration_s=float(dv.duration_s), src_fps=float(dv.src_fps),
                       total_frames=int(dv.total_frames), fps=float(dv.src_fps), src_width=int(dv.src_width),
                       src_height=int(dv.src_height), src_frames=int(dv.total_frames))
            try:
                res.update(compute_signals(dv.frames).as_dict())
            except Exception:  # noqa: BLE001 - a signal that cannot be measured is null, never a lost row
                pass
            if self.patchify:
                try:
                    res.update(patches=Patches.of(dv.frames).data, frames=self.empty_frames())
                except ValueError:  # frames the model cannot take: shipped as frames, the scoring stage rejects them
                    pass
        res["decode_s"] = time.perf_counter() - t0
        return res

    def apply_prefilter(self, rows: list[dict[str, Any]]) -> None:
        """Skip the decoded rows that fail the prefilter: status "skipped", the failed condition(s) as error, no frames."""
        if not self.prefilter.active:
            return
        decoded = [r for r in rows if r["status"] == "ok"]
        for r, failed in zip(decoded, self.prefilter.failed(decoded)):
            if failed is not None:
                r.update(status="skipped", error_stage=PREFILTER_STAGE, error=failed, frames=self.empty_frames(),
                         patches=self.empty_patches())

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        from ray.data.extensions import ArrowVariableShapedTensorArray

        n = len(batch["row_id"])
        rows = []
        for i in range(n):
            status = _str_or_none(batch["status"][i]) or "ok"
            span = tuple(_float_or_none(batch[c][i]) if c in batch else None for c in self.SPAN_COLUMNS)
            rows.append(self.decode_row(batch["video"][i], status, _str_or_none(batch["error_stage"][i]),
                                        _str_or_none(batch["error"][i]), span))
        self.apply_prefilter(rows)
        types = self.output_types()
        cols: dict[str, pa.Array] = {}
        for c in self.PASS_THROUGH:
            cols[c] = pa.array([_str_or_none(v) for v in batch[c]] if c in batch else [None] * n, type=pa.string())
        for c in self.SPAN_COLUMNS:
            cols[c] = pa.array([_float_or_none(v) for v in batch[c]] if c in batch else [None] * n, type=pa.float64())
        for c in self.OUTPUT_COLUMNS:
            if c in cols:
                continue
            if c in ("frames", "patches"):
                arrays = [r[c] for r in rows]
                cols[c] = ArrowVariableShapedTensorArray.from_numpy(arrays) if n else pa.array([], type=types[c])
            else:
                cols[c] = pa.array([r[c] for r in rows], type=types[c])
        return pa.Table.from_arrays([cols[c] for c in self.OUTPUT_COLUMNS], names=list(self.OUTPUT_COLUMNS))
