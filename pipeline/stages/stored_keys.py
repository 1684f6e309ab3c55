"""Which score keys this invocation has stored: a scalable Bloom filter over the keys' own bits.

Why: in a fresh run almost every score-store lookup is a miss, and on S3 each miss is a GET (plus client
CPU in the scoring actor) per row. The in-flight registry keeps this filter of the keys stored since the
invocation began, so a lookup GETs only keys that may be there. A false positive costs one GET miss; there
are no false negatives. Written here (not a dependency) because the keys are already uniform hashes
(blake2b-128), so the filter is a bit array and two slices of the key: ~1.5-3 bytes per stored key
(~32 MB at 10^7 keys, ~256 MB at 10^8), in the registry actor, never in the driver.
"""

from __future__ import annotations

import numpy as np

BITS_PER_KEY = 12  # with K hashes: ~0.3% false positives per filter at capacity (~1% over a chain of them)
K = 7
FIRST_CAPACITY = 1 << 16


class StoredKeys:
    """add(keys) / may_contain(keys) for hex keys of >= 32 hex digits. Grows by chaining filters of doubling
    capacity (a scalable Bloom filter), so it needs no row count up front."""

    def __init__(self, first_capacity: int = FIRST_CAPACITY) -> None:
        self.filters: list[tuple[np.ndarray, int]] = []  # (bits as uint8, capacity)
        self.count = 0  # keys added to the newest filter
        self.added = 0
        self._grow(first_capacity)

    def _grow(self, capacity: int) -> None:
        m = 1 << max(3, int(np.ceil(np.log2(capacity * BITS_PER_KEY))))
        self.filters.append((np.zeros(m // 8, dtype=np.uint8), capacity))
        self.count = 0

    @staticmethod
    def _positions(keys: list[str], m: int) -> np.ndarray:
        h1 = np.array([int(k[:16], 16) for k in keys], dtype=np.uint64)
        h2 = np.array([int(k[16:32], 16) | 1 for k in keys], dtype=np.uint64)
        with np.errstate(over="ignore"):  # double hashing mod 2^64, then mod m (a power of two)
            pos = h1[:, None] + np.arange(K, dtype=np.uint64)[None, :] * h2[:, None]
        return pos & np.uint64(m - 1)

    def add(self, keys: list[str]) -> None:
        start = 0
        while start < len(keys):
            bits, cap = self.filters[-1]
            if self.count >= cap:
                self._grow(cap * 2)
                continue
            take = keys[start:start + cap - self.count]
            pos = self._positions(take, bits.size * 8)
            np.bitwise_or.at(bits, (pos >> np.uint64(3)).astype(np.int64), (1 << (pos & np.uint64(7))).astype(np.uint8))
            self.count += len(take)
            self.added += len(take)
            start += len(take)

    def may_contain(self, keys: list[str]) -> list[bool]:
        if not keys:
            return []
        hit = np.zeros(len(keys), dtype=bool)
        for bits, _cap in self.filters:
            pos = self._positions(keys, bits.size * 8)
            got = (bits[(pos >> np.uint64(3)).astype(np.int64)] >> (pos & np.uint64(7)).astype(np.uint8)) & 1
            hit |= got.all(axis=1)
        return hit.tolist()

    def nbytes(self) -> int:
        return sum(b.nbytes for b, _ in self.filters)
