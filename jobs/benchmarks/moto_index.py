"""A sorted key index for moto's ListObjectsV2, for the benchmarks' moto server only (never the tests', never
production).

Why: moto 5.2 answers every ListObjectsV2 by copying and scanning every key of the bucket
(`S3Backend.list_objects` iterates `bucket.keys.items()`, which copies the dict), so a listing of one small
folder costs time linear in the whole bucket: with the score store's one object per row, the --scale bench's
folds, in-flight markers and compaction listings slowed moto 40 -> 240 ms per request by ~60,000 keys, and
the benchmark measured moto, not the pipeline. S3 lists a prefix in time that depends on the page, not on
the bucket. With `install()`, each bucket keeps its key names sorted (updated on put / delete) and a listing
bisects to the prefix (or the continuation point), skips whole sub-folders when a delimiter folds them, and
stops after one page. What it returns is what moto returns (tests/test_bench_scale.py compares the two).
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable
from typing import Any

_LOCK = threading.RLock()
_END = "\U0010ffff"


def _names(store: Any) -> list[str]:
    names = store.__dict__.get("_vscore_names")
    if names is None:
        names = store.__dict__["_vscore_names"] = sorted(dict.keys(store))
    return names


def install() -> Callable[[], None]:
    """Patch moto's key store and ListObjectsV2 in this process; returns the undo."""
    from moto.s3.models import FakeDeleteMarker, FakeKey, FakeTableStorageBucket, S3Backend
    from moto.s3.exceptions import MethodNotAllowed
    from moto.s3.utils import _VersionedKeyStore as Store

    orig = {"__setitem__": Store.__setitem__, "setlist": Store.setlist, "pop": Store.pop,
            "list_objects_v2": S3Backend.list_objects_v2}

    def _added(store: Any, key: str, was: bool) -> None:
        if not was:
            bisect.insort(_names(store), key)

    def __setitem__(self: Any, key: str, value: Any) -> Any:
        with _LOCK:
            _names(self)  # built before the change, so the change is applied to it once
            was = dict.__contains__(self, key)
            orig["__setitem__"](self, key, value)
            _added(self, key, was)

    def setlist(self: Any, key: Any, list_: Any) -> Any:
        with _LOCK:
            _names(self)
            was = dict.__contains__(self, key)
            orig["setlist"](self, key, list_)
            _added(self, key, was)

    def pop(self: Any, key: str) -> None:
        with _LOCK:
            names = _names(self)
            orig["pop"](self, key)
            i = bisect.bisect_left(names, key)
            if i < len(names) and names[i] == key:
                del names[i]

    def list_objects_v2(self: Any, bucket: Any, prefix: str | None, delimiter: str | None,
                        continuation_token: str | None, start_after: str | None, max_keys: int) -> Any:
        if isinstance(bucket, FakeTableStorageBucket):
            raise MethodNotAllowed()
        limit = self._pagination_tokens.get(continuation_token) if continuation_token else start_after
        prefix = prefix or ""
        out: list[Any] = []
        with _LOCK:
            names = _names(bucket.keys)
            i = bisect.bisect_left(names, max(prefix, limit or ""))
            while i < len(names) and names[i].startswith(prefix) and (max_keys is None or len(out) <= max_keys):
                name = names[i]
                rest = name[len(prefix):]
                if delimiter and delimiter in rest:
                    folder = prefix + rest.split(delimiter)[0] + delimiter
                    if limit is None or folder > limit:
                        out.append(folder)
                    i = bisect.bisect_left(names, folder + _END, i)  # past everything in that folder
                    continue
                if limit is None or name > limit:
                    key = bucket.keys.get(name)
                    if isinstance(key, FakeKey) and not isinstance(key, FakeDeleteMarker):
                        out.append(key)
                i += 1
        out.sort(key=self._get_name)
        return self._truncate_result(out, max_keys)

    Store.__setitem__, Store.setlist, Store.pop = __setitem__, setlist, pop
    S3Backend.list_objects_v2 = list_objects_v2

    def undo() -> None:
        Store.__setitem__, Store.setlist, Store.pop = orig["__setitem__"], orig["setlist"], orig["pop"]
        S3Backend.list_objects_v2 = orig["list_objects_v2"]

    return undo
