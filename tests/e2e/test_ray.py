"""The Ray executor on a real Ray head (127.0.0.1, 2 CPUs): the same results and files as the local executor, a
killed worker retried then recorded as failed while the others finish, a rerun that completes it; and the clear
errors of a Ray run that cannot work."""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from peftbench.cli import main
from peftbench.errors import ConfigError
from peftbench.pipeline.executor import progress_line
from peftbench.store.rundir import REPORT_FILES, read_tree, write_tree
from tests.e2e import ray_faults
from tests.helpers import grid_search, tiny_run_args

# A Ray head on 127.0.0.1 and its ports: one at a time (make test runs serial tests after the parallel rest).
pytestmark = pytest.mark.serial

needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="the Ray executor tests need Ray: pip install 'peftbench[ray]'"
)

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head started with `ray start` on 127.0.0.1 with 2 CPUs, its own ports, temp folder and token (so that
    other Ray instances on this machine neither see it nor are seen); its workers import peftbench (and the fault
    hook) from this checkout. Stopped, with every process it started, when the module's tests are done."""
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit 107 characters
    port = _free_port()
    token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}  # `ray start`'s default: a token
    environment = os.environ | token | {"PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    command = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        f"--ray-client-server-port={_free_port()}",
        "--num-cpus=2",
        "--num-gpus=0",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--temp-dir={temp}",
    ]
    log = open(Path(temp) / "head.log", "w")  # noqa: SIM115 (open while the head runs)
    head = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT)
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in token.items():
                patch.setenv(name, value)  # the driver (peftbench in this process) presents the head's token
            deadline = time.monotonic() + 120
            while not (Path(temp) / "ray_current_cluster").is_file():
                assert head.poll() is None, (Path(temp) / "head.log").read_text()
                assert time.monotonic() < deadline, "the Ray head did not start in 120 s"
                time.sleep(0.2)
            yield f"127.0.0.1:{port}"
    finally:
        head.terminate()  # --block: the head stops the processes it started as it exits
        head.wait(timeout=60)
        log.close()
        for pid in _processes_naming(temp):  # any that outlived it (named by our own temp folder)
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


def _processes_naming(text: str) -> list[int]:
    """The processes whose command line holds text (a Ray worker's holds its task's name while it runs it)."""
    found = []
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in path.read_bytes():
                found.append(int(path.parent.name))
        except OSError:
            continue
    return found


def _files(output: Path) -> list[str]:
    return sorted(str(p.relative_to(output)) for p in output.rglob("*") if p.is_file())


def _quality(metrics_file: Path) -> dict:
    """What a trial's figures say about quality (timings aside): epochs, test scores, parameter counts."""
    metrics = json.loads(metrics_file.read_text())
    return {key: metrics[key] for key in ("epochs", "test", "trainable_params", "total_params")}


@needs_ray
def test_ray_executor_matches_the_local_one(tiny_gpt2, articles, tmp_path, ray_head):
    def args(output, *extra):
        return tiny_run_args(
            tiny_gpt2, articles, output, "--methods", "lora,ia3", "--seeds", "0,1", "--epochs", "1", *extra
        )

    assert main(args(tmp_path / "local", "--in-process")) == 0  # the local executor (in one process: the same figures)
    assert (
        main(
            args(
                tmp_path / "ray",
                "--executor",
                "ray",
                "--ray-address",
                ray_head,
                "--ray-scratch",
                str(tmp_path / "scratch"),
            )
        )
        == 0
    )
    local, remote = tmp_path / "local", tmp_path / "ray"
    assert _files(remote) == _files(local)
    trials = [p.relative_to(local) for p in local.rglob("metrics.json")]
    assert len(trials) == 2 * 4  # lora, ia3 and the two references (zero-shot, Lead-3) at each seed
    for trial in trials:
        assert _quality(remote / trial) == _quality(local / trial), trial
        held_out = [json.loads(path.read_text())["retention"] for path in (remote / trial, local / trial)]
        if trial.parent.name != "lead-3":  # the base model and every method: forgetting's figures, as local
            assert held_out[0]["ids"] == held_out[1]["ids"] and held_out[0]["tokens"] == held_out[1]["tokens"]
            assert held_out[0]["nats"] == pytest.approx(held_out[1]["nats"], rel=1e-6), trial
        predictions = trial.parent / "predictions.jsonl"
        assert (remote / predictions).read_text() == (local / predictions).read_text()
    for seed in (0, 1):
        adapter = Path(f"seed-{seed}", "lora", "adapter", "adapter_model.safetensors")
        trained, expected = load_file(remote / adapter), load_file(local / adapter)
        assert trained.keys() == expected.keys()
        # A worker computes with --cpus-per-trial torch threads (1 here), this process with all cores: sums in another
        # order may round a weight's last bit differently, which none of the figures above shows.
        assert all(torch.allclose(trained[name], expected[name], rtol=0, atol=1e-6) for name in expected)
    assert (remote / REPORT_FILES).is_dir() and (remote / "summary.md").read_text().count("lora") >= 1
    assert not list((tmp_path / "scratch").iterdir())  # every shipped trial's scratch folder is gone


@needs_ray
def test_killed_worker_is_retried_then_recorded_and_a_rerun_completes_it(
    tiny_gpt2, articles, tmp_path, ray_head, monkeypatch, capsys
):
    output, scratch, marker = tmp_path / "out", tmp_path / "scratch", tmp_path / "kills"
    args = tiny_run_args(
        tiny_gpt2,
        articles,
        output,
        "--methods",
        "lora,ia3",
        "--seed",
        "3",
        "--executor",
        "ray",
        "--ray-address",
        ray_head,
        "--ray-scratch",
        str(scratch),
    )
    monkeypatch.setenv("RAY_RUNTIME_ENV_HOOK", f"{ray_faults.__name__}.with_killer")
    monkeypatch.setenv(ray_faults.MARKER, str(marker))
    monkeypatch.setenv(ray_faults.METHOD, "lora")
    monkeypatch.setenv(ray_faults.SEED, "3")
    monkeypatch.setenv(ray_faults.KILLS, "2")  # the first try and its retry

    assert main(args) == 2  # a dead worker is a cause the user can act on (memory, a lost node), not a bug
    assert marker.read_text().splitlines() == ["killed after epoch-1", "killed after epoch-2"]  # the retry resumed
    failure = json.loads((output / "lora" / "failed.json").read_text())
    assert "died" in failure["error"] and failure["seed"] == 3
    assert "lora failed: its process died" in capsys.readouterr().err
    assert not (output / "lora" / "metrics.json").exists()
    finished = (output / "ia3" / "metrics.json").stat().st_mtime_ns  # the other trial and the reference finished
    assert (output / "zero-shot" / "metrics.json").is_file()
    assert len(list(scratch.glob("peftbench-lora-*/lora/checkpoint/epoch-2"))) == 1  # left where the worker ran

    monkeypatch.delenv("RAY_RUNTIME_ENV_HOOK")
    assert main(args) == 0  # resumes lora alone, from the checkpoint on this node
    resumed = json.loads((output / "lora" / "metrics.json").read_text())
    assert [e["epoch"] for e in resumed["epochs"]] == [0, 1, 2]
    assert not (output / "lora" / "failed.json").exists()
    assert (output / "ia3" / "metrics.json").stat().st_mtime_ns == finished
    assert not list(scratch.iterdir())


def test_ray_asked_for_where_it_cannot_work(tiny_gpt2, articles, tmp_path, monkeypatch, capsys):
    args = tiny_run_args(tiny_gpt2, articles, tmp_path / "out", "--methods", "lora", "--executor", "ray")
    assert main([*args[:-2], "--executor", "dask"]) == 2
    assert "--executor must be one of local, ray, got 'dask'" in capsys.readouterr().err
    assert main([*args, "--cpus-per-trial", "0"]) == 2
    assert "--cpus-per-trial must be a finite number greater than 0, got 0.0" in capsys.readouterr().err
    assert main([*args, "--cpus-per-trial", "inf"]) == 2  # no node has infinitely many
    assert "--cpus-per-trial must be a finite number greater than 0, got inf" in capsys.readouterr().err
    assert main([*args, "--gpus-per-trial", "-1"]) == 2
    assert "--gpus-per-trial must be a finite number at least 0, got -1.0" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed: importing it fails
    assert main(args) == 2
    assert "--executor ray needs Ray, which is not installed: pip install 'peftbench[ray]'" in capsys.readouterr().err
    monkeypatch.undo()
    if importlib.util.find_spec("ray") is not None:
        assert main([*args, "--in-process"]) == 2
        assert "--in-process runs every trial in this process" in capsys.readouterr().err


@needs_ray
def test_trial_resources_no_node_has(tiny_gpt2, articles, tmp_path, ray_head, capsys):
    args = tiny_run_args(
        tiny_gpt2,
        articles,
        tmp_path / "out",
        "--methods",
        "lora",
        "--executor",
        "ray",
        "--ray-address",
        ray_head,
        "--gpus-per-trial",
        "1",
    )
    assert main(args) == 2
    assert "no node of the Ray cluster has 1 CPUs and 1 GPUs for one trial (nodes: 2 CPUs, 0 GPUs)" in (
        capsys.readouterr().err
    )
    assert not list((tmp_path / "out").rglob("metrics.json"))


@needs_ray
def test_ctrl_c_cancels_the_running_trials_and_keeps_the_finished(tiny_gpt2, articles, tmp_path, ray_head):
    output = tmp_path / "out"
    # Enough epochs that both trials are still training when the first checkpoint appears, however fast the machine.
    args = tiny_run_args(
        tiny_gpt2,
        articles,
        output,
        "--methods",
        "lora,ia3",
        "--epochs",
        "20",
        "--executor",
        "ray",
        "--ray-address",
        ray_head,
        "--ray-scratch",
        str(tmp_path / "scratch"),
    )
    environment = os.environ | {"PYTHONPATH": str(ROOT / "src")}
    # Ctrl-C as in a terminal, however this test session was started (a shell's background job ignores SIGINT, and
    # Python started so leaves it ignored).
    interruptible = (
        "import signal, sys\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "from peftbench.cli import main\nsys.exit(main(sys.argv[1:]))"
    )
    driver = subprocess.Popen(
        [sys.executable, "-c", interruptible, *args], env=environment, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while not list((tmp_path / "scratch").glob("*/*/checkpoint/epoch-*")):  # the methods are training
        assert driver.poll() is None, driver.stderr.read()
        assert time.monotonic() < deadline, "no method reached its first checkpoint"
        time.sleep(0.2)
    driver.send_signal(signal.SIGINT)
    assert driver.wait(timeout=120) == 130
    err = driver.stderr.read()
    assert "cancelled 2 unfinished trial(s) on Ray" in err and "interrupted" in err
    assert (output / "zero-shot" / "metrics.json").is_file()  # finished before: intact
    assert not list(output.glob("*/failed.json")) and not list(output.rglob("adapter"))
    time.sleep(2)
    assert not _processes_naming("ray::run_on_worker")  # no worker trains on


def test_shipped_files_land_inside_the_comparison_only(tmp_path):
    comparison = tmp_path / "out"
    (tmp_path / "elsewhere").mkdir()
    (comparison / "lora").mkdir(parents=True)
    (comparison / "lora" / "link").symlink_to(tmp_path / "elsewhere")
    for name in ("../escaped.json", "/tmp/absolute.json", "lora/link/through.json"):
        with pytest.raises(ConfigError, match="would lie outside"):
            write_tree(comparison, {"lora/metrics.json": b"{}", name: b"x"})
    assert not (comparison / "lora" / "metrics.json").exists()  # refused before anything is written
    assert not list((tmp_path / "elsewhere").iterdir()) and not (tmp_path / "escaped.json").exists()
    shipped = {"lora/metrics.json": b"{}", "lora/adapter/adapter_model.safetensors": b"weights"}
    write_tree(comparison, shipped)
    (comparison / "lora" / "checkpoint" / "epoch-1").mkdir(parents=True)
    (comparison / "lora" / "checkpoint" / "epoch-1" / "state.pt").write_bytes(b"state")
    assert read_tree(comparison) == shipped  # checkpoints stay where the worker wrote them


def test_progress_line():
    assert progress_line(3, 2, 7, 0, 250) == (
        "[ray] trials: 3 done, 2 running, 7 queued, 0 failed; 4 min 10 s elapsed, ETA 12 min 30 s"
    )
    assert progress_line(0, 2, 2, 0, 5) == "[ray] trials: 0 done, 2 running, 2 queued, 0 failed; 5 s elapsed, ETA -"
    assert progress_line(3, 0, 0, 1, 61).endswith("1 failed; 1 min 01 s elapsed, all finished")


@needs_ray
def test_a_search_on_ray_goes_on_from_the_trials_in_output(tiny_gpt2, articles, tmp_path, ray_head):
    def args(grid):
        where = ("--executor", "ray", "--ray-address", ray_head)
        return tiny_run_args(tiny_gpt2, articles, tmp_path / "ray", *grid_search("ia3", grid), *where)

    assert main(args("1e-3,3e-2")) == 0
    trials = tmp_path / "ray" / "ia3" / "trials"
    assert sorted(path.name for path in trials.iterdir()) == ["lr-1e-03", "lr-3e-02"]
    # A finished trial is not trained again on a worker: the record in --output is what the search goes on from
    # (marked here with a validation loss no training gives, which then loses the selection).
    record = trials / "lr-1e-03" / "trial.json"
    marked = json.loads(record.read_text())
    marked["epochs"][-1]["val_loss"] = 99.0
    record.write_text(json.dumps(marked))
    assert main(args("1e-3,3e-2,1e-2")) == 0
    search = json.loads((tmp_path / "ray" / "ia3" / "metrics.json").read_text())["search"]
    assert [trial["name"] for trial in search["trials"]] == ["lr-1e-03", "lr-1e-02", "lr-3e-02"]
    assert search["trials"][0]["epochs"][-1]["val_loss"] == 99.0 and search["selected"] != "lr-1e-03"
    assert (trials / "lr-1e-02" / "trial.json").is_file()
