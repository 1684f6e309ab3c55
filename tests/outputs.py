"""Reading a run's output back the way a lakehouse reader does: the whole hive-partitioned Parquet dataset at an
output URL (local path or S3 through our fsspec filesystem), as one Arrow table."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.dataset as pads
from pyarrow.fs import FSSpecHandler, PyFileSystem

from pipeline.config import StorageOptions
from pipeline.storage import filesystem


def read_output(url: str, storage: StorageOptions | None = None) -> pa.Table:
    fs, root = filesystem(url, storage or StorageOptions())
    return pads.dataset(root, format="parquet", partitioning="hive", filesystem=PyFileSystem(FSSpecHandler(fs))).to_table()
