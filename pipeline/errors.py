"""Errors that are the user's to fix, not bugs: a wrong path, a folder that is not a scores dataset, a bad
config or expression, a run id that is not there. `vscore` (pipeline/cli.py) prints their message as one
line, ``vscore <command>: <message>``, and exits 2, like argparse does for a bad argument; any other
exception is a bug and keeps its traceback.

They subclass ValueError so that library callers who catch ValueError keep working."""

from __future__ import annotations


class UsageError(ValueError):
    """What was asked cannot be done as asked; the message says what was expected and what was found."""


class ConfigError(UsageError):
    """A run config that is missing, not YAML, or not valid (unknown key, wrong type, bad override)."""


class ScoresDatasetError(UsageError):
    """A path that is not a usable scores dataset: missing, empty, not Parquet, another schema, no such run."""


class OutputExistsError(UsageError, FileExistsError):
    """An output that must not exist (or must be empty) already holds data."""


class CapacityError(UsageError):
    """The cluster cannot run the plan: no node can host an actor the run needs (at start, or after the nodes
    that could were lost). Committed work is kept; a rerun with capacity back resumes."""


class StorageAccessError(UsageError):
    """Object storage refused an operation that retrying cannot fix (AccessDenied on a PUT: a bucket that became
    read-only, revoked credentials). The message names the URL and the error."""
