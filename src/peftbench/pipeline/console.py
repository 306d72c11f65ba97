"""The console of a run: one object, built once from --quiet and handed down, that knows who may print. Progress goes
to stdout from the main process unless --quiet; warnings and failures go to stderr from the main process always."""

from __future__ import annotations

import sys
import threading
import warnings
from dataclasses import dataclass

from tqdm import tqdm as std_tqdm

from peftbench import parallel


@dataclass(frozen=True)
class Console:
    """Where a run's messages go. quiet: print nothing but warnings and errors."""

    quiet: bool = False

    @property
    def shows_progress(self) -> bool:
        """Whether progress lines and bars are shown: the main process's, unless quiet."""
        return not self.quiet and parallel.is_main()

    def say(self, text: str) -> None:
        """A progress line (stdout)."""
        if self.shows_progress:
            print(text)

    def warn(self, text: str) -> None:
        """A warning or a failure (stderr), never silenced by --quiet: `peftbench: <text>`."""
        if parallel.is_main():
            print(f"peftbench: {text}", file=sys.stderr)


def quiet_libraries() -> None:
    """Keep the console for peftbench's own progress: no library progress bars or deprecation chatter."""
    from transformers.utils import logging as hf_logging  # the model libraries load only in a process that runs models

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    # tqdm's default lock is a multiprocessing one: in a spawned method process, a named semaphore in /dev/shm that a
    # killed process leaves to multiprocessing's resource tracker (and its "leaked semaphore" warning). The bars of
    # one process need a thread lock only.
    std_tqdm.set_lock(threading.RLock())
