"""A fault for the Ray executor's tests: a trial's worker that SIGKILLs itself right after a checkpoint.

The driver's environment names with_killer in RAY_RUNTIME_ENV_HOOK (Ray's own hook on the job's runtime
environment); every worker of that job then runs kill_after_checkpoint as it starts. The kill counts itself in a
marker file, so that a worker started after the limit trains on.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

MARKER = "PEFTBENCH_TEST_KILL_MARKER"  # a file with one line per kill so far
METHOD = "PEFTBENCH_TEST_KILL_METHOD"  # the method whose worker dies
SEED = "PEFTBENCH_TEST_KILL_SEED"  # at this seed
KILLS = "PEFTBENCH_TEST_KILLS"  # this many times


def with_killer(runtime_env: dict[str, Any] | None) -> dict[str, Any]:
    """The job's runtime environment, with kill_after_checkpoint run in every worker and its settings passed on."""
    runtime_env = dict(runtime_env or {})
    runtime_env["worker_process_setup_hook"] = f"{__name__}.kill_after_checkpoint"
    runtime_env["env_vars"] = {
        **runtime_env.get("env_vars", {}),
        **{k: os.environ[k] for k in (MARKER, METHOD, SEED, KILLS)},
    }
    return runtime_env


def kill_after_checkpoint() -> None:
    """Make checkpoint.save kill this process after writing the chosen trial's checkpoint, up to KILLS times."""
    import torch

    from peftbench.training import checkpoint

    save = checkpoint.save

    def save_then_die(directory, *args, **kwargs):
        path = save(directory, *args, **kwargs)
        marker = Path(os.environ[MARKER])
        kills = len(marker.read_text().splitlines()) if marker.exists() else 0
        chosen = directory.name == os.environ[METHOD] and torch.initial_seed() == int(os.environ[SEED])
        if chosen and kills < int(os.environ[KILLS]):
            with marker.open("a") as stream:
                stream.write(f"killed after {path.name}\n")
            os.kill(os.getpid(), signal.SIGKILL)
        return path

    checkpoint.save = save_then_die
