"""Object storage access: the fsspec filesystem for any URL (s3://, gs://, https://, local) with the
run's storage options (endpoint, credentials, retries), shared by every stage and tool."""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import fsspec

from pipeline.config import StorageOptions


def filesystem(url: str, storage: StorageOptions) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for `url` and the path inside it (S3: with its retries counted, see `take_retries`)."""
    protocol = fsspec.utils.get_protocol(url)
    fs, path = fsspec.core.url_to_fs(url, **storage.fsspec_kwargs(protocol))
    if hasattr(fs, "retries"):  # s3fs: attempts for connection resets, timeouts and SlowDown
        fs.retries = storage.retries
        count_retries(fs)
    return fs, path


# -- retry counting ------------------------------------------------------------------------------------------
# An S3 request is retried in two layers: botocore's standard retry mode (5xx, throttling such as SlowDown,
# connection errors; with backoff, and only while the client's retry quota lasts) and, once botocore gives up,
# s3fs's own loop (`s3fs.core._error_wrapper`: SlowDown, resets, truncated bodies). Each process counts the
# retries it makes here; the stages send the deltas to the run's counters (pipeline.run.stats) and the summary
# carries them (`storage_retries`). One count = one request sent again after a failed attempt.
_RETRIES: collections.Counter[str] = collections.Counter()
_RETRIES_LOCK = threading.Lock()  # incremented on fsspec's I/O thread, read by the stage's thread


def _bump(layer: str) -> None:
    with _RETRIES_LOCK:
        _RETRIES[layer] += 1


def _on_request_created(request: Any, **_: Any) -> None:
    # botocore numbers the attempts of one API call in the request context (1 = the first send)
    if (getattr(request, "context", None) or {}).get("retries", {}).get("attempt", 1) > 1:
        _bump("botocore")


def count_retries(fs: Any) -> None:
    """Count botocore's retries (a `request-created` handler on the client: the documented event hook, fired for
    every attempt) and s3fs's (a wrapper around s3fs's retry loop: s3fs has no callback for its retries). Both
    are idempotent: a cached filesystem passes through here on every `filesystem()` call."""
    _wrap_s3fs_retry_loop()
    try:
        fs.s3.meta.events.register("request-created.s3", _on_request_created, unique_id="vscore-count-retries")
    except Exception:  # noqa: BLE001 - counting is observability; a client that cannot be set up fails on use
        pass


# Errors s3fs's loop must retry once botocore has given up (its retry quota spent: 500 tokens per client, 5 per
# throttled retry, so a busy process runs dry within a minute of 80% SlowDown). s3fs itself retries a ClientError
# only when its *message* says SlowDown, and a 503 to a HEAD request (exists, info, size: every cat_file asks the
# size first) has no body, hence no code or message: "503 Service Unavailable", not retried. Measured: 16 concurrent
# reads in one process under 80% SlowDown lost ~20% of their requests that way after ~15-20 s.
_RETRYABLE_STATUS = frozenset({500, 502, 503, 504})
_RETRYABLE_CODES = frozenset({"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling",
                              "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException"})


def _retryable(exc: BaseException) -> bool:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return status in _RETRYABLE_STATUS or (response.get("Error") or {}).get("Code") in _RETRYABLE_CODES


def _wrap_s3fs_retry_loop() -> None:
    import s3fs.core

    original = s3fs.core._error_wrapper
    if getattr(original, "_vscore_counting", False):
        return
    s3fs.core.set_custom_error_handler(_retryable)  # s3fs's documented hook: which other errors its loop retries

    async def counting(func: Any, *, args: Any = (), kwargs: Any = None, retries: int) -> Any:
        calls = 0

        async def attempt(*a: Any, **kw: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls > 1:  # s3fs calls `func` again after a failure it deems retryable
                _bump("s3fs")
            return await func(*a, **kw)

        return await original(attempt, args=args, kwargs=kwargs, retries=retries)

    counting._vscore_counting = True  # type: ignore[attr-defined]
    s3fs.core._error_wrapper = counting


def take_retries() -> dict[str, int]:
    """This process's storage retries since the last call, by layer ({} when none), and reset to zero."""
    with _RETRIES_LOCK:
        out = {k: v for k, v in _RETRIES.items() if v}
        _RETRIES.clear()
    return out


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return fs.protocol in ("file", ("file", "local"), "local")


def put_atomic(fs: fsspec.AbstractFileSystem, path: str, payload: bytes) -> None:
    """One PUT (object stores) / write + rename (local): a reader sees the old object or the new, never half."""
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    if is_local(fs):
        tmp = f"{path}.tmp"
        with fs.open(tmp, "wb") as f:
            f.write(payload)
        fs.mv(tmp, path)
    else:
        fs.pipe_file(path, payload)


def drop_listings(fs: fsspec.AbstractFileSystem, folder: str) -> None:
    """Forget every cached listing of `folder` and below (s3fs's `invalidate_cache(path)` drops the folder's
    and its parents' listings only, so a subfolder listed earlier would hide files other processes wrote since)."""
    fs.invalidate_cache(folder)
    cache = getattr(fs, "dircache", None)
    if cache:
        prefix = folder.rstrip("/") + "/"
        for key in [k for k in list(cache) if k.startswith(prefix)]:
            cache.pop(key, None)


def with_protocol(fs: fsspec.AbstractFileSystem, path: str) -> str:
    return path if is_local(fs) else fs.unstrip_protocol(path)


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
