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
from peftbench.store.rundir import MethodDir

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
    try:
        return json.loads(directory.fingerprint.read_text())["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


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
        if stored == expected:
            continue
        if stored is None:
            what = "no readable fingerprint.json (an older peftbench, or not a peftbench run)"
        else:
            keys = sorted(k for k in expected.keys() | stored.keys() if expected.get(k) != stored.get(k))
            what = "; ".join(f"{k}: {stored.get(k)!r} there, {expected.get(k)!r} now" for k in keys[:5])
        where = directory.path.relative_to(output)
        raise ConfigError(
            f"{str(output)!r} holds results of a different configuration ({where}: {what}). "
            "Use another --output, or --force to run this configuration there (rerunning every requested method)"
        )
