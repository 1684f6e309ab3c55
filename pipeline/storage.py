"""Object storage access: the fsspec filesystem for any URL (s3://, gs://, https://, local) with the
run's storage options (endpoint, credentials, retries), shared by every stage and tool."""

from __future__ import annotations

import fsspec

from pipeline.config import StorageOptions


def filesystem(url: str, storage: StorageOptions) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for `url` and the path inside it."""
    protocol = fsspec.utils.get_protocol(url)
    fs, path = fsspec.core.url_to_fs(url, **storage.fsspec_kwargs(protocol))
    if hasattr(fs, "retries"):  # s3fs: attempts for connection resets, timeouts and SlowDown
        fs.retries = storage.retries
    return fs, path


def with_protocol(fs: fsspec.AbstractFileSystem, path: str) -> str:
    return fs.unstrip_protocol(path) if fs.protocol not in ("file", ("file", "local"), "local") else path


def read_bytes(url: str, storage: StorageOptions) -> bytes:
    fs, path = filesystem(url, storage)
    with fs.open(path, "rb") as f:
        return f.read()
