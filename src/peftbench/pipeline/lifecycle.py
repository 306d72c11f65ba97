"""Process lifecycle: the processes a run starts end with the process that started them, and SIGTERM stops a run the
way Ctrl-C does (finished results kept, method processes stopped, exit code 143).

A method's process (pipeline) and each process a launcher starts (torchrun, accelerate launch) call die_with_parent
first thing, so that killing their parent, even with SIGKILL, leaves nothing training, writing or holding memory.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager

PR_SET_PDEATHSIG = 1  # from linux/prctl.h
WATCH_SECONDS = 0.5  # the watchdog's polling interval, where the kernel cannot be asked
# Set by torchrun (and by accelerate launch, which runs torchrun's launcher) in every process it starts.
LAUNCHER_VARIABLES = ("TORCHELASTIC_RUN_ID", "LOCAL_RANK")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt, so that both stop a run the same way."""

    exit_code = 128 + signal.SIGTERM


def die_with_parent(parent: int) -> None:
    """End this process (SIGKILL) when the process parent ends, however it ends.

    parent: the parent's PID as the parent saw it, so that a parent that died before this call is caught too. Linux
    asks the kernel (PR_SET_PDEATHSIG); elsewhere a watchdog thread polls the parent's PID.
    """
    if not sys.platform.startswith("linux") or ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0):
        watch_parent(parent)
    if os.getppid() != parent:  # it died before the kernel was asked
        os.kill(os.getpid(), signal.SIGKILL)


def watch_parent(parent: int) -> None:
    """A daemon thread that kills this process once its parent is no longer parent (an orphan's parent changes)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(WATCH_SECONDS)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="peftbench-watch-parent", daemon=True).start()


def die_with_launcher() -> None:
    """Under torchrun or accelerate launch: end with the launcher (which starts each process in a session of its own,
    so killing the launcher's process group does not reach them). Started otherwise (a shell, nohup), nothing."""
    if any(name in os.environ for name in LAUNCHER_VARIABLES):
        die_with_parent(os.getppid())


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within: SIGTERM raises Terminated in the main thread, as Ctrl-C raises KeyboardInterrupt (only the main thread
    can handle signals; elsewhere this does nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop_workers(pool: ProcessPoolExecutor) -> None:
    """Kill a process pool's workers now, and wait for them to end: an interrupted method stops at once (its last
    checkpoint resumes it) instead of training on while the pool waits for it."""
    workers = list(pool._processes.values())  # public only from Python 3.14 (ProcessPoolExecutor.kill_workers)
    for worker in workers:
        worker.kill()
    for worker in workers:
        worker.join()
