"""Errors the user can fix: the CLI prints them without a traceback and exits with their exit code (2 by default)."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# A write that fails while its filesystem has less room than this failed for want of space: torch.save reports a full
# disk as an error of its own ("unexpected pos"), without an errno or a word of it.
FULL_BELOW_BYTES = 2**20


class UserError(Exception):
    """Something the user can fix (a setting, the data, the machine); never a bug in peftbench."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """A mistake in the configuration, the data or the model given: found before (or while) anything runs."""


class DiskFull(UserError):
    """The filesystem of a file being written is full (or over quota); what was written before is intact."""


class NonFiniteLoss(UserError):
    """The training loss became NaN or infinite: this method stops (the others go on); usually the learning rate."""


class MethodsFailed(UserError):
    """Some methods failed; the others' results, the summary and the report are written. exit_code is 2 when every
    failure has a cause the user can fix, 1 when one looks like a bug."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def _free_bytes(path: Path) -> int | None:
    """Room left for unprivileged writes on path's filesystem (None where it cannot be told)."""
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    try:
        stats = os.statvfs(existing or ".")
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


@contextmanager
def no_space(path: Path, advice: str) -> Iterator[None]:
    """Around a write into path: a failure on a full (or over-quota) filesystem becomes DiskFull naming path and
    advice, whatever the writer raised (an OSError, or safetensors' error quoting the system's); others pass as
    they are."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as exc:
        said = (isinstance(exc, OSError) and exc.errno in NO_SPACE) or any(os.strerror(e) in str(exc) for e in NO_SPACE)
        free = _free_bytes(path)
        if said or (free is not None and free < FULL_BELOW_BYTES):
            raise DiskFull(f"no space left on device while writing {path}; {advice}") from exc
        raise
