"""Faults a real user causes: a killed or terminated run, two runs on one folder, corrupt checkpoints and results, a
full disk, and symlinks that lead out of --output. Finished results survive each, and a rerun completes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peftbench.cli import main
from peftbench.training import checkpoint
from tests.helpers import KILLABLE, children, command_line, gone_within, launched, tiny_run_args


def _wait_for(path: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 300
    while not path.exists():
        assert process.poll() is None, process.stderr.read() if process.stderr else process.returncode
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _semaphores(pid: int) -> set[int]:
    """The named POSIX semaphores (multiprocessing's locks and queues) a process has open: the inodes of its files in
    /dev/shm (their creator maps them under a temporary name, since deleted)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return set()
    return {int(line.split()[4]) for line in maps.splitlines() if "/dev/shm/sem." in line}


def _left_in_shm(inodes: set[int]) -> list[str]:
    return [entry.path for entry in os.scandir("/dev/shm") if entry.inode() in inodes]


def _long(tiny_models, articles, output: Path, *extra: str) -> list[str]:
    """A run whose methods train for 40 epochs each: seconds of training to land a signal in."""
    return tiny_run_args(tiny_models["gpt2"], articles, output, "--epochs", "40", "--eval-every", "40", *extra)


# ---------------------------------------------------------------------------------------------- processes


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_run_takes_its_method_process_along(signum, tiny_models, articles, tmp_path, capsys):
    """kill -9 or SIGTERM to `peftbench run` while a method trains in its own process: that process ends with it,
    no semaphore stays in /dev/shm, nothing is written afterwards, finished results stay, and a rerun completes."""
    output = tmp_path / "out"
    args = _long(tiny_models, articles, output)
    assert main([*args, "--methods", "lora", "--in-process"]) == 0
    finished = (output / "lora" / "metrics.json").read_bytes()
    command = [sys.executable, "-m", "peftbench", *args, "--methods", "lora,ia3"]
    with launched(command, stderr=subprocess.PIPE, text=True) as run:
        _wait_for(output / "ia3" / "checkpoint", run)  # training: its epoch-1 lives one epoch only (older go)
        (child,) = [pid for pid in children(run.pid) if "resource_tracker" not in command_line(pid)]
        semaphores = _semaphores(run.pid) | _semaphores(child)
        assert semaphores, "no semaphores found: this test would check nothing"
        os.kill(run.pid, signum)
        assert run.wait(timeout=60) == (128 + signum if signum == signal.SIGTERM else -signum)
        assert gone_within([child], 10), command_line(child)
        left = sorted(p.name for p in (output / "ia3" / "checkpoint").iterdir())
        time.sleep(1)
        assert sorted(p.name for p in (output / "ia3" / "checkpoint").iterdir()) == left  # nobody writes any more
        deadline = time.monotonic() + 10
        while _left_in_shm(semaphores) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _left_in_shm(semaphores)
        if signum == signal.SIGTERM:  # a clean exit: no semaphore is left for the resource tracker to clean (warning)
            err = run.stderr.read()
            assert "peftbench: terminated" in err and "Traceback" not in err and "leaked" not in err, err[-3000:]
    assert not (output / "ia3" / "metrics.json").exists()
    assert (output / "lora" / "metrics.json").read_bytes() == finished

    assert main([*args, "--methods", "lora,ia3", "--in-process"]) == 0  # the lock died with its holder
    assert (output / "lora" / "metrics.json").read_bytes() == finished
    ia3 = json.loads((output / "ia3" / "metrics.json").read_text())
    assert ia3["epochs"][-1]["epoch"] == 40 and not (output / "ia3" / "checkpoint").exists()


def test_a_terminated_search_takes_its_unit_and_trial_processes_along(tiny_models, articles, tmp_path):
    """SIGTERM to `peftbench run --search` while a trial trains: the search's process and the trial's own process
    under it end with the run, and nobody writes into the trial afterwards."""
    output = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "peftbench",
        *_long(tiny_models, articles, output),
        "--methods",
        "ia3",
        "--search",
        "lr",
        "--lr-grid",
        "1e-3,1e-2",
        "--search-trials",
        "2",
    ]
    with launched(command, stderr=subprocess.PIPE, text=True) as run:
        trial = output / "ia3" / "trials" / "lr-1e-03" / "checkpoint"
        _wait_for(trial, run)
        (unit,) = [pid for pid in children(run.pid) if "resource_tracker" not in command_line(pid)]
        (stage,) = [pid for pid in children(unit) if "resource_tracker" not in command_line(pid)]
        os.kill(run.pid, signal.SIGTERM)
        assert run.wait(timeout=60) == 128 + signal.SIGTERM
        assert gone_within([unit, stage], 10), [command_line(unit), command_line(stage)]
        left = sorted(p.name for p in trial.iterdir())
        time.sleep(1)
        assert sorted(p.name for p in trial.iterdir()) == left
        assert "peftbench: terminated" in run.stderr.read()
    assert not (output / "ia3" / "metrics.json").exists()


def test_a_second_run_on_the_same_output_is_refused_while_the_first_lives(tiny_models, articles, tmp_path, capsys):
    """The first run holds OUTPUT (here: asleep after its first checkpoint); a second exits 2 naming it, a report
    may read meanwhile, and once the first is killed its lock is gone with it."""
    output = tmp_path / "out"
    args = tiny_run_args(tiny_models["gpt2"], articles, output, "--epochs", "1", "--in-process")
    assert main([*args, "--methods", "lora"]) == 0
    command = [sys.executable, "-c", KILLABLE, *args, "--methods", "lora,ia3"]
    with launched(command, stderr=subprocess.PIPE, text=True) as first:
        _wait_for(output / "ia3" / "checkpoint" / "epoch-1", first)
        capsys.readouterr()
        assert main([*args, "--methods", "lora,ia3"]) == 2
        err = capsys.readouterr().err
        assert f"--output {str(output)!r} is in use by another peftbench run (PID {first.pid}, started " in err
        assert "Traceback" not in err
        assert main(["report", str(output)]) == 0  # reading needs no lock
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    assert main([*args, "--methods", "lora,ia3"]) == 0
    assert (output / "ia3" / "metrics.json").is_file()


@pytest.mark.parametrize("how", ["die_with_parent", "watch_parent"])
def test_a_process_ends_with_its_parent(how):
    """The kernel's parent-death signal (Linux) and the watchdog (elsewhere; run here too): a process whose parent
    is killed ends within seconds."""
    grandchild = (
        f"import os, time; from peftbench.pipeline import lifecycle; lifecycle.{how}(os.getppid()); print('ready', "
        "flush=True); time.sleep(600)"
    )
    parent = (
        f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', {grandchild!r}]); "
        "print(p.pid, flush=True); time.sleep(600)"
    )
    with launched(
        [sys.executable, "-c", parent], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as middle:
        pid = int(middle.stdout.readline())
        assert middle.stdout.readline().strip() == "ready"
        os.kill(middle.pid, signal.SIGKILL)
        middle.wait()
        assert gone_within([pid], 5), f"{pid} outlived its parent"


# ---------------------------------------------------------------------------------------------- corrupt files


class Crash(Exception):
    """Stands for a process dying right after its first checkpoint."""


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, tiny_models, articles):
    """Full fine-tuning stopped after epoch 1 of 2 (checkpoint/epoch-1 left), and the uninterrupted run's metrics."""
    root = tmp_path_factory.mktemp("interrupted")

    def args(output):
        return tiny_run_args(tiny_models["gpt2"], articles, output, "--methods", "full", "--seed", "5", "--in-process")

    assert main(args(root / "reference")) == 0
    save = checkpoint.save

    def save_then_crash(*args, **kwargs):
        save(*args, **kwargs)
        raise Crash

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(checkpoint, "save", save_then_crash)
        assert main(args(root / "interrupted")) == 1
    assert sorted(p.name for p in (root / "interrupted" / "full" / "checkpoint").iterdir()) == ["epoch-1"]
    return args, root / "interrupted", json.loads((root / "reference" / "full" / "metrics.json").read_text())


def _cut(name: str, size: int):
    def corrupt(path: Path) -> None:
        with (path / name).open("r+b") as stream:
            stream.truncate(size)

    return corrupt


def _scramble(name: str):
    def corrupt(path: Path) -> None:
        (path / name).write_bytes(os.urandom((path / name).stat().st_size))

    return corrupt


def _remove(name: str):
    return lambda path: (path / name).unlink()


CORRUPTIONS = {
    "weights empty": _cut(checkpoint.WEIGHTS_FILE, 0),
    "weights cut to 100 bytes": _cut(checkpoint.WEIGHTS_FILE, 100),
    "weights cut to 5,000,000 bytes": _cut(checkpoint.WEIGHTS_FILE, 5_000_000),
    "weights random": _scramble(checkpoint.WEIGHTS_FILE),
    "state empty": _cut(checkpoint.STATE_FILE, 0),
    "state random": _scramble(checkpoint.STATE_FILE),
    "state cut in half": lambda path: _cut(checkpoint.STATE_FILE, (path / checkpoint.STATE_FILE).stat().st_size // 2)(
        path
    ),
    "progress cut": _cut(checkpoint.PROGRESS_FILE, 10),
    "progress missing": _remove(checkpoint.PROGRESS_FILE),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_an_unreadable_checkpoint_is_set_aside_for_the_previous_one(corruption, interrupted, tmp_path, capsys):
    args, source, reference = interrupted
    output = tmp_path / "out"
    shutil.copytree(source, output)
    checkpoints = output / "full" / "checkpoint"
    assert (checkpoints / "epoch-1" / checkpoint.WEIGHTS_FILE).stat().st_size > 5_000_000  # the cut cuts
    shutil.copytree(checkpoints / "epoch-1", checkpoints / "epoch-2")  # as if epoch 2's had been written, badly
    CORRUPTIONS[corruption](checkpoints / "epoch-2")
    capsys.readouterr()
    assert main(args(output)) == 0
    err = capsys.readouterr().err
    assert "checkpoint epoch-2 of full is unreadable" in err and "set aside as epoch-2.corrupt" in err
    assert "full resumes from epoch-1" in err and "Traceback" not in err
    resumed = json.loads((output / "full" / "metrics.json").read_text())
    assert resumed["epochs"] == reference["epochs"] and resumed["test"] == reference["test"]


def test_the_only_checkpoint_unreadable_starts_the_method_over(interrupted, tmp_path, capsys):
    args, source, reference = interrupted
    output = tmp_path / "out"
    shutil.copytree(source, output)
    CORRUPTIONS["state random"](output / "full" / "checkpoint" / "epoch-1")
    capsys.readouterr()
    assert main(args(output)) == 0
    err = capsys.readouterr().err
    assert "checkpoint epoch-1 of full is unreadable" in err and "full starts from scratch" in err
    resumed = json.loads((output / "full" / "metrics.json").read_text())
    assert resumed["epochs"] == reference["epochs"] and resumed["test"] == reference["test"]


def test_an_unreadable_metrics_json_is_set_aside_and_the_method_reruns(tiny_models, articles, tmp_path, capsys):
    output = tmp_path / "out"
    args = tiny_run_args(tiny_models["gpt2"], articles, output, "--methods", "lora", "--epochs", "1", "--in-process")
    assert main(args) == 0
    metrics = output / "lora" / "metrics.json"
    whole = metrics.read_text()
    metrics.write_text(whole[: len(whole) // 2])
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "lora/metrics.json (unreadable (JSONDecodeError" in err and "set aside as metrics.json.corrupt" in err
    assert "Traceback" not in err
    assert (output / "lora" / "metrics.json.corrupt").read_text() == whole[: len(whole) // 2]
    assert json.loads(metrics.read_text())["epochs"] == json.loads(whole)["epochs"]


def test_predictions_read_back_whole_with_unicode_line_separators_and_damage(tiny_models, articles, tmp_path, capsys):
    """Articles may hold U+2028 (valid in JSON): predictions.jsonl keeps it raw, and reading it back split there, so
    the report at the end of a finished run failed. A damaged line makes the file unusable: named, and exit 2."""
    rows = [json.loads(line) for line in articles.read_text().splitlines()]
    for row in rows:
        row["article"] = row["article"].replace(". ", ".\u2028", 1)
    data = tmp_path / "d.json"
    data.write_text(json.dumps(rows, ensure_ascii=False))
    output = tmp_path / "out"
    args = tiny_run_args(tiny_models["gpt2"], data, output, "--methods", "lora", "--epochs", "1", "--in-process")
    assert main(args) == 0
    predictions = output / "lora" / "predictions.jsonl"
    assert "\u2028" in predictions.read_text()
    assert "\u2028" in (output / "report.md").read_text()  # the examples table shows the articles
    lines = predictions.read_text().split("\n")
    predictions.write_text("\n".join([lines[0][:20], *lines[1:]]))  # the first row cut short
    assert main(["report", str(output)]) == 2
    assert f"{predictions}: changed since it was written" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- full disk


FULL_DISK = """
import contextlib, io, json, os, sys
from pathlib import Path
from peftbench.cli import main

disk, args = Path(sys.argv[1]), json.loads(sys.argv[2])
output = disk / "out"

def run(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    return {"code": code, "err": err.getvalue()}

def contents(*names):
    return {name: (output / name).read_text() if (output / name).exists() else None for name in names}

first = run(args)
before = contents("lora/metrics.json", "report.md", "report.html")
stream = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
for size in (2**16, 2**10, 1):  # to the last byte
    with contextlib.suppress(OSError):
        while True:
            os.write(stream, b"x" * size)
os.close(stream)
second = run(["report", str(output)])
files = sorted(str(path.relative_to(output)) for path in output.rglob("*"))
print(json.dumps({"first": first, "second": second, "before": before, "files": files,
                  "after": contents("lora/metrics.json", "report.md", "report.html")}))
"""


def _on_a_small_disk(disk: Path, size: str, program: str, *args: str, env: dict[str, str] | None = None) -> str:
    """Run a Python program with a real filesystem of size mounted at disk (tmpfs, in a user and mount namespace of
    its own: no privileges needed); returns its output. Skips where namespaces are not allowed."""
    if not shutil.which("unshare"):
        pytest.skip("needs unshare (util-linux) to mount a small filesystem without privileges")
    disk.mkdir()
    mount = f'mount -t tmpfs -o size={size} peftbench-full {disk} && exec {sys.executable} -c "$0" "$@"'
    command = ["unshare", "--map-root-user", "--mount", "sh", "-c", mount, program, *args]
    with launched(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
    ) as done:
        out, err = done.communicate(timeout=600)
    if done.returncode and "mount" in err and not out:
        pytest.skip(f"cannot mount a filesystem in a namespace here: {err.strip()[-300:]}")
    assert done.returncode == 0, err[-3000:]
    return out


def test_a_full_disk_is_reported_and_leaves_finished_results_and_no_temporary_files(tiny_models, articles, tmp_path):
    """On a real 3 MB filesystem: LoRA's results fit, full fine-tuning's checkpoint does not; then the report is
    rewritten on the disk filled to the last byte."""
    disk = tmp_path / "disk"
    args = tiny_run_args(
        tiny_models["gpt2"], articles, disk / "out", "--methods", "lora,full", "--epochs", "1", "--in-process"
    )
    seen = json.loads(_on_a_small_disk(disk, "3m", FULL_DISK, str(disk), json.dumps(args)).splitlines()[-1])
    first, second = seen["first"], seen["second"]
    for attempt in (first, second):
        assert attempt["code"] == 2, attempt["err"][-3000:]
        assert "no space left on device while writing" in attempt["err"], attempt["err"][-3000:]
        assert "finished results are intact" in attempt["err"] and "Traceback" not in attempt["err"]
    assert f"while writing {disk / 'out' / 'full'}" in first["err"]
    assert json.loads(seen["before"]["lora/metrics.json"])["method"] == "lora"
    assert seen["after"] == seen["before"]  # report.md and report.html: both old, or both absent
    temporary = [name for name in seen["files"] if Path(name).name.startswith(".") and name != ".peftbench.lock"]
    assert temporary == []


CONVERT = """
import contextlib, io, json, os, sys
from peftbench.cli import main

err = io.StringIO()
with contextlib.redirect_stderr(err):
    code = main(sys.argv[1:])
print(json.dumps({"code": code, "err": err.getvalue(), "cache": os.listdir(os.environ["PEFTBENCH_CACHE"])}))
"""


def test_a_full_disk_under_the_model_cache_is_reported(articles, tmp_path):
    """The embedded model is converted on first use into PEFTBENCH_CACHE (0.6 GB); on a 50 MB disk that is an error
    naming the folder and what to do, leaving nothing half-written."""
    disk = tmp_path / "disk"
    args = [
        "run",
        "--methods",
        "lora",
        "--dataset",
        str(articles),
        "--output",
        str(tmp_path / "out"),
        "--dry-run",
        "--train-size",
        "8",
        "--eval-size",
        "4",
        "--test-size",
        "4",
    ]
    out = _on_a_small_disk(disk, "50m", CONVERT, *args, env={"PEFTBENCH_CACHE": str(disk)})
    seen = json.loads(out.splitlines()[-1])
    assert seen["code"] == 2, seen["err"][-3000:]
    assert f"no space left on device while writing {disk / 'SmolLM2-135M-Instruct'}" in seen["err"]
    assert "PEFTBENCH_CACHE" in seen["err"] and "Traceback" not in seen["err"]
    assert seen["cache"] == []


# ---------------------------------------------------------------------------------------------- symlinks


LINKS = {
    "seed directory": ("seed-1", ["--seeds", "0,1"]),
    "figures of the report": ("report_files", []),
    "checkpoints": ("lora/checkpoint", []),
    "adapter": ("lora/adapter", []),
    "trackers": ("trackers", ["--report-to", "tensorboard"]),
    "zero-shot": ("zero-shot", []),
    "Lead-3": ("lead-3", []),
    "results table": ("results.csv", []),
    "lock file": (".peftbench.lock", []),
}


@pytest.mark.parametrize("case", list(LINKS))
def test_a_symlink_out_of_output_is_refused(case, tiny_models, articles, tmp_path, capsys):
    link, extra = LINKS[case]
    output, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    (elsewhere / "epoch-7").mkdir(parents=True)  # something of the user's, which nothing may touch
    (output / link).parent.mkdir(parents=True, exist_ok=True)
    (output / link).symlink_to(elsewhere, target_is_directory=True)
    args = tiny_run_args(
        tiny_models["gpt2"], articles, output, "--methods", "lora", "--epochs", "1", "--in-process", *extra
    )
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{output / link}' is a symlink leading out of" in err and "Traceback" not in err, err[-3000:]
    assert [p.name for p in elsewhere.rglob("*")] == ["epoch-7"]


def test_report_refuses_a_symlinked_figures_folder(tiny_models, articles, tmp_path, capsys):
    output, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    args = tiny_run_args(tiny_models["gpt2"], articles, output, "--methods", "lora", "--epochs", "1", "--in-process")
    assert main(args) == 0
    shutil.rmtree(output / "report_files")
    elsewhere.mkdir()
    (output / "report_files").symlink_to(elsewhere, target_is_directory=True)
    capsys.readouterr()
    assert main(["report", str(output)]) == 2
    assert "is a symlink leading out of" in capsys.readouterr().err
    assert list(elsewhere.iterdir()) == []
