"""Errors the user can fix: the CLI prints them without a traceback and exits with their exit code (2 by default)."""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix (a setting, the data, the machine); never a bug in peftbench."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """A mistake in the configuration, the data or the model given: found before (or while) anything runs."""


class NonFiniteLoss(UserError):
    """The training loss became NaN or infinite: this method stops (the others go on); usually the learning rate."""


class MethodsFailed(UserError):
    """Some methods failed; the others' results, the summary and the report are written. exit_code is 2 when every
    failure has a cause the user can fix, 1 when one looks like a bug."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
