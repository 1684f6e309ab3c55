"""The bench's modes: what one run of `jobs/bench.py` measures. Each mode is a module of this package
with

    NAME: str                     the mode's name in --help
    SUMMARY: str                  one line for --help (name the flag that selects it)
    DEFAULT: bool                 True for the one mode run when no other mode is selected (optional)
    add_arguments(group)          its flags, into an argparse argument group of its own
    selected(args) -> bool        whether the parsed flags ask for it (not asked of the default mode)
    run(args, work) -> dict       its results sections, merged into the run's results by key
    report(res) -> list[str]      its lines of the ratio table, from the whole results dict

Adding a mode (`--scale`, `--feed`, `--soak`, ...) = one module with these, named in MODES. The modules
import only the standard library and this package at import time (heavy imports inside functions), so
building the parser stays cheap."""

from __future__ import annotations

import argparse
import importlib
from types import ModuleType

MODES = ("cpu", "gpu", "spans", "scale", "feed", "soak", "gcs")  # module names, in --help and ratio-table order


def load(name: str) -> ModuleType:
    return importlib.import_module(f"{__package__}.{name}")


def all_modes() -> list[ModuleType]:
    return [load(n) for n in MODES]


def choose(args: argparse.Namespace) -> ModuleType:
    """The mode the parsed flags select: the one non-default mode whose `selected(args)` is true, else
    the default mode."""
    mods = all_modes()
    picked = [m for m in mods if not getattr(m, "DEFAULT", False) and m.selected(args)]
    if len(picked) > 1:
        raise SystemExit(f"bench: one mode per run, got {', '.join(m.NAME for m in picked)}")
    if picked:
        return picked[0]
    defaults = [m for m in mods if getattr(m, "DEFAULT", False)]
    assert len(defaults) == 1, "exactly one mode is the default"
    return defaults[0]
