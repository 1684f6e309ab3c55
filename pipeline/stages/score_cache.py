"""Never score the same clip twice: a score store keyed by (content hash, prompt, score fingerprint) and an
in-run registry of clips in flight.

- The key of a row: blake2b(`content_hash`, prompt, `ScoreConfig.score_fingerprint()`). The prompt is part
  of it because text-to-video alignment is a score of the (video, prompt) pair.
- Stores (fsspec, one small JSON object per scored clip): the run's own store under the output
  (``OUT/_vscore/score-store/<run>/``, always) and, with `cache.url`, the cross-run cache
  (``CACHE/<score fingerprint>/``). A hit in the run's store is a duplicate (`duplicate_of` = the row that
  was scored); a hit in the cross-run cache only is `from_cache`. A different setting is another fingerprint:
  it misses.
- Lookups that cannot hit are not made: the registry also keeps a Bloom filter of the keys this invocation
  stored (`pipeline.stages.stored_keys`); when the run's store was empty as the invocation began (a fresh run,
  the common case) a lookup GETs only keys the filter may hold, so a fresh run makes no GET per row, only
  the PUT. A rerun (the store already holds objects: rows scored before a crash) GETs every key, as the
  restore needs. The results of a batch are PUT concurrently.
- In flight: a named Ray actor per driver invocation holds only the keys being scored now (released when
  the result is stored), so its memory is bounded by the rows in flight, not by the corpus. A row whose key
  another batch is scoring waits for that result (polling the store) and copies it; if the owner goes away
  without a result (error, actor death) or after `WAIT_S`, it scores the clip itself.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from pipeline.storage import drop_listings, filesystem, is_local, put_atomic

# what a copy takes from the scored row (identity, timing and the row's own facts stay its own)
COPIED = ("visual_quality", "text_alignment", "physical_consistency",
          "visual_quality_soft", "text_alignment_soft", "physical_consistency_soft",
          "visual_quality_expected", "text_alignment_expected", "physical_consistency_expected",
          "visual_quality_mean", "text_alignment_mean", "physical_consistency_mean",
          "visual_quality_std", "text_alignment_std", "physical_consistency_std",
          "num_samples", "samples_parsed", "rationale", "raw_output", "parse_mode", "out_of_range")
WAIT_S = 600.0
POLL_S = 0.2


def score_key(content_hash: str, prompt: str, fingerprint: str) -> str:
    return hashlib.blake2b(f"{content_hash}\x00{prompt}\x00{fingerprint}".encode(), digest_size=16).hexdigest()


def registry_name(invocation: str) -> str:
    return f"vscore-inflight-{invocation}"


def run_store_url(cfg: Any) -> str:
    return f"{cfg.output.path.rstrip('/')}/_vscore/score-store/{cfg.resolved_run_id()}"


def store_is_empty(cfg: Any) -> bool:
    """Whether the run's store holds no object yet (one listing of at most one key on S3)."""
    store = Store(run_store_url(cfg), cfg.output.storage)
    drop_listings(store.fs, store.root)
    try:
        return not store.fs.exists(store.root)  # S3: a listing of at most one key; local: the folder (conservative)
    finally:
        drop_listings(store.fs, store.root)


class Store:
    """One JSON object per key under `url`: {"row_id": the scored row, "run_id", "fields": COPIED values}."""

    def __init__(self, url: str, storage: Any) -> None:
        self.fs, self.root = filesystem(url, storage)
        self.root = self.root.rstrip("/")

    def path(self, key: str) -> str:
        return f"{self.root}/{key[:2]}/{key}.json"

    def get_many(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        if not keys:
            return {}
        paths = {self.path(k): k for k in keys}
        try:
            blobs = self.fs.cat(list(paths), on_error="omit")
        except FileNotFoundError:
            return {}
        out = {}
        for p, b in blobs.items():
            k = paths.get(p) or paths.get(p.split("://", 1)[-1]) or next((v for q, v in paths.items() if q.endswith(p) or p.endswith(q)), None)
            if k is None or isinstance(b, Exception):
                continue
            try:
                out[k] = json.loads(b)
            except ValueError:  # a torn object (never written by put: one PUT / rename); treated as a miss
                continue
        return out

    def put_many(self, records: dict[str, dict[str, Any]]) -> None:
        """One object per key; on object stores the PUTs go concurrently (s3fs `pipe` of a dict)."""
        if not records:
            return
        if is_local(self.fs) or len(records) == 1:
            for k, r in records.items():
                put_atomic(self.fs, self.path(k), json.dumps(r).encode())
        else:
            self.fs.pipe({self.path(k): json.dumps(r).encode() for k, r in records.items()})


class InflightRegistry:
    """Ray actor body: key -> owner row id for the clips being scored right now, and which keys this
    invocation stored. `warm`: the run's store held objects when the invocation began, so any key may be
    there (every lookup GETs)."""

    def __init__(self, warm: bool = True) -> None:
        from pipeline.stages.stored_keys import StoredKeys

        self.owners: dict[str, str] = {}
        self.warm = warm
        self.stored_keys = StoredKeys()

    def is_warm(self) -> bool:
        return self.warm

    def may_be_stored(self, keys: list[str]) -> list[bool]:
        return [True] * len(keys) if self.warm else self.stored_keys.may_contain(keys)

    def stored(self, keys: list[str]) -> None:
        self.stored_keys.add(keys)

    def claim(self, keys: list[str], row_ids: list[str]) -> list[str]:
        """The owner of each key after the call: the caller's row id where it was free."""
        out = []
        for k, r in zip(keys, row_ids):
            out.append(self.owners.setdefault(k, r))
        return out

    def owners_of(self, keys: list[str]) -> list[str | None]:
        return [self.owners.get(k) for k in keys]

    def release(self, keys: list[str], row_ids: list[str]) -> None:
        for k, r in zip(keys, row_ids):
            if self.owners.get(k) == r:
                del self.owners[k]

    def size(self) -> int:
        return len(self.owners)


def start_registry(invocation: str, warm: bool = True) -> Any:
    """Pinned to the driver's node, as the run's stats actor is (`pipeline.run.stats.create`): every scoring
    batch calls it, and a lost node must not take it with it."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(num_cpus=0)(InflightRegistry).options(name=registry_name(invocation), lifetime=None,
                                                            scheduling_strategy=here).remote(warm)


class ScoreCache:
    """What the scoring stage uses: look rows up, claim the rest, store results, release."""

    def __init__(self, cfg: Any, invocation: str | None) -> None:
        self.fingerprint = cfg.score_fingerprint()
        self.run_id = cfg.resolved_run_id()
        self.run_store = Store(run_store_url(cfg), cfg.output.storage)
        self.cache = Store(f"{cfg.cache.url.rstrip('/')}/{self.fingerprint}", cfg.cache.storage) if cfg.cache.url else None
        self.registry = None
        self.filtered = False  # whether lookups ask the registry which keys may be stored (a cold start's run)
        if cfg.cache.dedup and invocation:
            try:
                import ray

                self.registry = ray.get_actor(registry_name(invocation))
                self.filtered = not ray.get(self.registry.is_warm.remote())  # warm: every key may be stored
            except Exception:  # noqa: BLE001 - no registry (a unit test, a plain call): in-batch + store only
                self.registry = None

    def key(self, row: dict[str, Any]) -> str | None:
        h, p = row.get("content_hash"), row.get("prompt")
        return score_key(h, p, self.fingerprint) if isinstance(h, str) and isinstance(p, str) else None

    def lookup(self, keys: list[str]) -> dict[str, tuple[dict[str, Any], bool]]:
        """key -> (record, from the cross-run cache only)."""
        ask = keys
        if self.filtered and keys:
            import ray

            ask = [k for k, maybe in zip(keys, ray.get(self.registry.may_be_stored.remote(keys))) if maybe]
        found = {k: (r, False) for k, r in self.run_store.get_many(ask).items()}
        rest = [k for k in keys if k not in found]
        if self.cache is not None and rest:
            found.update({k: (r, True) for k, r in self.cache.get_many(rest).items()})
        return found

    def claim(self, keys: list[str], row_ids: list[str]) -> list[str]:
        if self.registry is None or not keys:
            return list(row_ids)
        import ray

        return ray.get(self.registry.claim.remote(keys, row_ids))

    def release(self, keys: list[str], row_ids: list[str]) -> None:
        if self.registry is not None and keys:
            import ray

            ray.get(self.registry.release.remote(keys, row_ids))

    def wait_for(self, keys: list[str], owners: list[str]) -> dict[str, tuple[dict[str, Any], bool]]:
        """Results of keys other batches are scoring, as they are stored; keys whose owner released them
        without a result (or that outlive WAIT_S) are left out: the caller scores them itself."""
        import ray

        found: dict[str, tuple[dict[str, Any], bool]] = {}
        waiting = dict(zip(keys, owners))
        t0 = time.monotonic()
        while waiting and time.monotonic() - t0 < WAIT_S:
            found.update(self.lookup(list(waiting)))
            for k in list(waiting):
                if k in found:
                    del waiting[k]
            if not waiting:
                break
            now = ray.get(self.registry.owners_of.remote(list(waiting)))
            gone = [k for k, o in zip(list(waiting), now) if o != waiting[k]]
            if gone:  # released: stored after our lookup above, or without a result (then not ours to wait for)
                found.update(self.lookup(gone))
                for k in gone:
                    del waiting[k]
            time.sleep(POLL_S)
        return found

    def store(self, scored: dict[str, dict[str, Any]]) -> None:
        """key -> scored row: one object each in the run's store (and the cross-run cache), then the keys
        are marked stored in the registry (before the caller releases them: a waiter then finds them)."""
        if not scored:
            return
        records = {k: {"row_id": row["row_id"], "run_id": self.run_id, "fields": {c: row.get(c) for c in COPIED},
                       "tokens": [row.get("prompt_tokens"), row.get("output_tokens")]} for k, row in scored.items()}
        self.run_store.put_many(records)
        if self.cache is not None:
            self.cache.put_many(records)
        if self.registry is not None:
            import ray

            ray.get(self.registry.stored.remote(list(records)))


def copy_into(row: dict[str, Any], record: dict[str, Any], from_cache: bool) -> None:
    """Fill `row` with a stored scoring. The row's own earlier scoring (a rerun after a crash that scored it
    but did not commit it) is restored as it was; another row's is a duplicate (or a cache hit): its tokens
    and engine time stay null (this row made no engine call)."""
    row.update(record["fields"])
    row.update(status="ok", error_stage=None, error=None, score_s=None, prompt_tokens=None, output_tokens=None)
    if from_cache:
        row["from_cache"] = True
    elif record.get("row_id") != row["row_id"]:
        row["duplicate_of"] = record["row_id"]
    else:
        row["prompt_tokens"], row["output_tokens"] = (record.get("tokens") or [None, None])[:2]
