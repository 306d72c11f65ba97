"""Fingerprints: a hash of the settings that decide a method's results, kept in its folder from the moment it starts, so
that a finished method of this configuration is told from another configuration's (and an OUTPUT holding another
configuration's results is refused)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from peftbench.config.fields import NOT_FINGERPRINTED as SETTINGS_NOT_FINGERPRINTED
from peftbench.config.run_config import RunConfig
from peftbench.errors import ConfigError
from peftbench.store import rundir
from peftbench.store.rundir import FINGERPRINT_FILE, MethodDir

# What a method's results do not depend on: the settings config/fields.py marks so, and how the batch size was given
# (`batch_size` holds the global figure either way).
NOT_FINGERPRINTED = (*SETTINGS_NOT_FINGERPRINTED, "batch_size_given_as")


def fingerprinted(config: RunConfig) -> dict[str, Any]:
    """The settings that decide a method's results: the config without NOT_FINGERPRINTED.

    Every method's options stay in: methods share some (LoRA's variants train on --lora-r and --lora-targets), so
    leaving out "the others' options" could skip a method whose settings did change.
    """
    return {k: v for k, v in config.to_dict().items() if k not in NOT_FINGERPRINTED}


def fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def write_fingerprint(directory: MethodDir, config: RunConfig) -> None:
    settings = fingerprinted(config)
    text = json.dumps({"fingerprint": fingerprint(settings), "settings": settings}, indent=2, sort_keys=True)
    rundir.write_atomic(directory.fingerprint, text + "\n")


def matches(directory: MethodDir, config: RunConfig) -> bool:
    """Whether directory's fingerprint is this configuration's."""
    return _stored_settings(directory) == json.loads(json.dumps(fingerprinted(config)))  # as stored: lists


def _stored_settings(directory: MethodDir) -> dict[str, Any] | None:
    """The settings directory's fingerprint.json holds (None where it is missing, unreadable or of another shape)."""
    try:
        stored = json.loads(directory.fingerprint.read_text())
    except (OSError, ValueError):
        return None
    settings = stored.get("settings") if isinstance(stored, dict) else None
    fine = isinstance(settings, dict) and stored.get("fingerprint") == fingerprint(settings)
    return settings if fine else None


def damage(directory: MethodDir) -> dict[str, str]:
    """What of directory's work cannot be used again, by file, and why: its result's damage (MethodDir.damage) and a
    fingerprint.json that is unreadable, or missing beside finished work (it says which configuration the work is
    of). {} where all is whole."""
    found = directory.damage()
    if directory.holds_work() and _stored_settings(directory) is None:
        there = directory.fingerprint.exists()
        found[FINGERPRINT_FILE] = "unreadable, or not a fingerprint" if there else "missing beside finished work"
    return found


def set_aside(directory: MethodDir, damaged: dict[str, str]) -> list[str]:
    """Set aside (as <name>.corrupt, for a look) each damaged file of directory, and its result with them, so that its
    work is done again; without a fingerprint its checkpoints go too (they may be another configuration's). Returns
    one line per file, saying why."""
    lines = []
    for name in sorted(damaged):
        path = directory.path / name
        there = path.exists() or path.is_symlink()
        aside = f": set aside as {rundir.set_aside(path).name}" if there else ""
        lines.append(f"{directory.name}/{name} ({damaged[name]}){aside}")
    record = directory.path / directory.RESULT_FILE
    if directory.RESULT_FILE not in damaged and record.exists():
        aside = rundir.set_aside(record).name
        lines.append(f"{directory.name}/{directory.RESULT_FILE} (it stands on the files above): set aside as {aside}")
    if FINGERPRINT_FILE in damaged:
        rundir.remove(directory.checkpoints)
    return lines


def check_output(output: Path, config: RunConfig) -> None:
    """Refuse an OUTPUT holding results or checkpoints of another configuration (unless --force), naming what differs.

    Results of the same configuration are fine: finished methods are skipped, interrupted ones resumed.
    """
    if config.force or not output.is_dir():
        return
    single = config.seeds[0] if config.seeds else config.seed  # the seed of directories directly under OUTPUT
    started = [(d, seed) for comparison, seed in rundir.comparisons(output) for d in rundir.method_dirs(comparison)]
    for directory, seed in [(d, seed) for d, seed in started if d.holds_work()]:
        this = replace(config, seed=single if seed is None else seed)
        expected = json.loads(json.dumps(fingerprinted(this)))  # as stored: lists, not tuples
        stored = _stored_settings(directory)
        if stored is None or stored == expected:
            continue  # a damaged fingerprint's work is set aside and done again (damage), never mixed in
        keys = sorted(k for k in expected.keys() | stored.keys() if expected.get(k) != stored.get(k))
        what = "; ".join(f"{k}: {stored.get(k)!r} there, {expected.get(k)!r} now" for k in keys[:5])
        where = directory.path.relative_to(output)
        raise ConfigError(
            f"{str(output)!r} holds results of a different configuration ({where}: {what}). "
            "Use another --output, or --force to run this configuration there (rerunning every requested method)"
        )
