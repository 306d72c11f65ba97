"""A pytest plugin: the session fails if any process it started outlives it (after killing them). Tests must clean up,
and peftbench's own processes must end with their parent."""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers import alive, command_line, status_of

# Every process this test session starts inherits this variable: at the end, any still alive is a leftover.
SESSION_MARKER = "PEFTBENCH_TEST_SESSION"


LEFTOVER_GRACE_SECONDS = 10  # a process killed at the end of the last test may take a moment to go


def pytest_configure(config) -> None:
    os.environ[SESSION_MARKER] = uuid.uuid4().hex


def _environment_of(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:  # gone, or a zombie
        return b""


def _own_resource_tracker(pid: int) -> bool:
    """multiprocessing's resource tracker of this process: it ends when this process does."""
    status = status_of(pid)
    return status is not None and status[1] == os.getpid() and "resource_tracker" in command_line(pid)


def leftover_processes() -> list[int]:
    """Processes started during this session (they carry its marker) that are still alive, but this one and its
    resource tracker."""
    marker = f"{SESSION_MARKER}={os.environ[SESSION_MARKER]}".encode()
    pids = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]
    return [
        pid
        for pid in pids
        if pid != os.getpid()
        and alive(pid)
        and marker in _environment_of(pid).split(b"\0")
        and not _own_resource_tracker(pid)
    ]


def pytest_sessionfinish(session, exitstatus) -> None:
    """Fail the session if any process it started outlived it (after killing them): tests must clean up, and
    peftbench's own processes must end with their parent."""
    if not Path("/proc/self/environ").exists():
        return  # no /proc to look in (not Linux)
    if getattr(session.config.option, "numprocesses", None) and not hasattr(session.config, "workerinput"):
        return  # pytest-xdist's controller: its only processes are the workers, and each worker checks its own tests'
    deadline = time.monotonic() + LEFTOVER_GRACE_SECONDS
    while (leftovers := leftover_processes()) and time.monotonic() < deadline:
        time.sleep(0.2)
    if not leftovers:
        return
    commands = []
    for pid in leftovers:
        commands.append(f"{pid}: {command_line(pid)[:200]}")
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    reporter.write_line(f"{len(leftovers)} process(es) started by the tests outlived them (now killed):", red=True)
    for line in commands:
        reporter.write_line("  " + line, red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
