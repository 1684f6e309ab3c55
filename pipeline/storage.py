"""Object storage access: the fsspec filesystem for any URL (s3://, gs://, https://, local) with the
run's storage options (endpoint, credentials, retries), shared by every stage and tool."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import fsspec

from pipeline.config import StorageOptions


def filesystem(url: str, storage: StorageOptions) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for `url` and the path inside it."""
    protocol = fsspec.utils.get_protocol(url)
    fs, path = fsspec.core.url_to_fs(url, **storage.fsspec_kwargs(protocol))
    if hasattr(fs, "retries"):  # s3fs: attempts for connection resets, timeouts and SlowDown
        fs.retries = storage.retries
    return fs, path


def put_atomic(fs: fsspec.AbstractFileSystem, path: str, payload: bytes) -> None:
    """One PUT (object stores) / write + rename (local): a reader sees the old object or the new, never half."""
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    if fs.protocol in ("file", ("file", "local"), "local"):
        tmp = f"{path}.tmp"
        with fs.open(tmp, "wb") as f:
            f.write(payload)
        fs.mv(tmp, path)
    else:
        fs.pipe_file(path, payload)


def with_protocol(fs: fsspec.AbstractFileSystem, path: str) -> str:
    return fs.unstrip_protocol(path) if fs.protocol not in ("file", ("file", "local"), "local") else path


def read_bytes(url: str, storage: StorageOptions) -> bytes:
    fs, path = filesystem(url, storage)
    with fs.open(path, "rb") as f:
        return f.read()


def static_prefix(spec_part: str) -> str:
    """The folder part of a URL pattern before any glob or brace range:
    `s3://b/shards/shard-{000..009}.tar` -> `s3://b/shards/`, `/data/x/*.tar` -> `/data/x/`."""
    cut = min((i for i, c in enumerate(spec_part) if c in "*?[{"), default=len(spec_part))
    head = spec_part[:cut]
    return head[: head.rfind("/") + 1] if "/" in head else ""


def input_prefixes(spec: str) -> list[str]:
    """The folders a whitespace-separated input spec reads from (see `static_prefix`)."""
    return sorted({p for p in (static_prefix(part) for part in spec.split()) if p})


def url_under(url: str, prefixes: list[str]) -> bool:
    """Whether `url` lies under one of `prefixes` (folder URLs ending in '/'): no '..' or '.' segment, no
    query or fragment tricks, the same scheme, and a plain string prefix after that."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.query or parts.fragment or any(seg in ("..", ".") for seg in parts.path.split("/")):
        return False
    return any(url.startswith(p if p.endswith("/") else p + "/") for p in prefixes)


@contextlib.contextmanager
def refused(fs: Any, path: str, op: str = "PUT") -> Iterator[None]:
    """Name the URL in a refused write (s3fs turns AccessDenied into a PermissionError without the path): the
    driver reports it in one line and stops the run (pipeline.run.job), since retrying cannot fix it."""
    try:
        yield
    except PermissionError as e:
        raise PermissionError(f"{op} {with_protocol(fs, path)} refused: {' '.join(str(e).split()) or 'AccessDenied'}") from None
