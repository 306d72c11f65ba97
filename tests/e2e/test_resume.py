"""Resume: a run killed with SIGKILL ends, when rerun, with the metrics of an uninterrupted run; finished methods are
skipped; --force reruns them; an OUTPUT of another configuration is refused."""

from __future__ import annotations

import json

import pytest

from peftbench.cli import main
from peftbench.config.run_config import RunConfig
from peftbench.store import fingerprints
from peftbench.store.rundir import MethodDir
from peftbench.training import checkpoint
from tests.helpers import killed_at, tiny_run_args


def _metrics(output, method: str) -> dict:
    return json.loads((output / method / "metrics.json").read_text())


def test_killed_run_resumes_to_the_uninterrupted_metrics(tiny_models, articles, tmp_path):
    def args(output):
        return tiny_run_args(
            tiny_models["gpt2"], articles, output, "--methods", "lora", "--epochs", "3", "--seed", "5", "--in-process"
        )

    assert main(args(tmp_path / "reference")) == 0
    output = tmp_path / "interrupted"
    killed_at(args(output), output / "lora" / "checkpoint" / "epoch-1")
    assert not (output / "lora" / "metrics.json").exists()
    assert sorted(p.name for p in (output / "lora" / "checkpoint").iterdir()) == ["epoch-1"]

    assert main(args(output)) == 0
    reference, resumed = _metrics(tmp_path / "reference", "lora"), _metrics(output, "lora")
    assert [e["epoch"] for e in resumed["epochs"]] == [0, 1, 2, 3]
    assert resumed["epochs"] == reference["epochs"]  # epochs 0-1 from the checkpoint, 2-3 trained after resuming
    assert resumed["test"] == reference["test"]
    assert resumed["retention"] == reference["retention"] and resumed["retention"]["base_loss"] is not None
    efficiency = resumed["efficiency"]
    assert efficiency["train_samples_per_s"] * efficiency["train_seconds"] == pytest.approx(24)  # 3 epochs x 8
    assert resumed["efficiency"]["latency_ms"]["base"] > 0
    steps = efficiency["train_steps"]  # every step of both sessions, each once: 3 epochs of 2 steps
    assert steps["epoch"] == [1, 1, 2, 2, 3, 3] and all(seconds > 0 for seconds in steps["seconds"])
    # Phases of both sessions: model loading twice and epoch 1 from before the kill (in progress.json)
    phases, wall = efficiency["phase_seconds"], efficiency["wall_seconds"]
    assert phases["training"] == pytest.approx(efficiency["train_seconds"], rel=0.05, abs=0.05)
    assert phases["latency"] > 0 and sum(phases.values()) <= wall
    shares = efficiency["other_cpu_share"]  # both sessions' too: what other processes used, per phase
    assert set(shares) == set(phases) and all(0 <= share <= 1 for share in shares.values())
    assert not (output / "lora" / "checkpoint").exists()  # removed once the method finished


def test_finished_methods_are_skipped_forced_or_guarded(tiny_models, articles, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a relative --output: nothing may be written beside it
    args = tiny_run_args(tiny_models["gpt2"], articles, "out", "--methods", "lora", "--epochs", "1", "--in-process")
    assert main(args) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no trackers, no runs/, no mlruns by default
    metrics = tmp_path / "out" / "lora" / "metrics.json"
    first = (metrics.read_bytes(), metrics.stat().st_mtime_ns)
    assert not (tmp_path / "out" / "trackers").exists()

    assert main([*args, "--methods", "lora,ia3"]) == 0  # same configuration, one more method: lora is skipped
    assert (metrics.read_bytes(), metrics.stat().st_mtime_ns) == first
    assert (tmp_path / "out" / "ia3" / "metrics.json").is_file()
    assert "| lora |" in (tmp_path / "out" / "summary.md").read_text()

    assert main([*args, "--force"]) == 0  # rerun: a new file with the same (seeded) metrics
    assert metrics.stat().st_mtime_ns != first[1]
    assert json.loads(metrics.read_bytes())["epochs"] == json.loads(first[0])["epochs"]

    capsys.readouterr()
    assert main([*args, "--epochs", "2"]) == 2  # another configuration: refused, nothing touched
    err = capsys.readouterr().err
    assert "different configuration" in err and "epochs: 1 there, 2 now" in err and "--force" in err
    assert "Traceback" not in err
    assert json.loads(metrics.read_bytes())["epochs"] == json.loads(first[0])["epochs"]


def test_fingerprint_ignores_what_does_not_change_results():
    base = fingerprints.fingerprinted(RunConfig())
    same = RunConfig(
        output="elsewhere",
        quiet=True,
        in_process=True,
        force=True,
        dry_run=True,
        methods=["lora"],
        seeds=[0, 1],
        report_to=["tensorboard"],
        allow_pickle=True,
    )
    assert fingerprints.fingerprinted(same) == base
    per_device = RunConfig(per_device_batch_size=4)  # one process: the same global batch as the default 4
    assert fingerprints.fingerprinted(per_device) == base
    for changed in (RunConfig(epochs=3), RunConfig(lora_r=4), RunConfig(seed=1), RunConfig(lr=1e-3)):
        assert fingerprints.fingerprint(fingerprints.fingerprinted(changed)) != fingerprints.fingerprint(base)


def test_latest_checkpoint_ignores_unfinished_writes(tmp_path):
    directory = MethodDir(tmp_path)
    for name in ("epoch-2", "epoch-10", ".tmp-abc", "epoch-x"):
        (directory.checkpoints / name).mkdir(parents=True)
    assert checkpoint.latest(directory) == directory.checkpoints / "epoch-10"  # numeric; a .tmp-* never counts
    assert checkpoint.latest(MethodDir(tmp_path / "nothing")) is None


class Crash(Exception):
    """Stands for a process dying right after a checkpoint (the SIGKILL test above does it for real, for LoRA)."""


# Resume restores each family's own state: AdaLoRA's rank allocation (importance scores and rank pattern), IA3's
# scaling vectors, prefix tuning's virtual tokens, and every weight with full fine-tuning.
@pytest.mark.parametrize("method", ["adalora", "ia3", "prefix", "full"])
def test_each_family_resumes_exactly(tiny_models, articles, tmp_path, monkeypatch, method):
    def args(output):
        return tiny_run_args(
            tiny_models["gpt2"],
            articles,
            output,
            "--methods",
            method,
            "--epochs",
            "3",
            "--seed",
            "5",
            "--in-process",
            "--lr",
            "1e-2",
        )

    assert main(args(tmp_path / "reference")) == 0
    save = checkpoint.save

    def save_then_crash(*args, **kwargs):
        save(*args, **kwargs)
        raise Crash

    monkeypatch.setattr(checkpoint, "save", save_then_crash)
    assert main(args(tmp_path / "interrupted")) == 1  # the method failed (not a user error), after epoch 1
    monkeypatch.setattr(checkpoint, "save", save)
    assert main(args(tmp_path / "interrupted")) == 0
    reference, resumed = _metrics(tmp_path / "reference", method), _metrics(tmp_path / "interrupted", method)
    assert reference["epochs"][1]["val_loss"] != reference["epochs"][3]["val_loss"]  # it trained after epoch 1
    assert resumed["epochs"] == reference["epochs"]
    assert resumed["test"] == reference["test"]


def test_resumed_log_has_every_step_once(tiny_models, articles, tmp_path, monkeypatch):
    """A run that dies after logging epoch 2 but before its checkpoint resumes from epoch 1's: log.jsonl is cut back
    to what that checkpoint had logged, so epoch 2 is logged once, as an uninterrupted run logs it."""

    def args(output):
        return tiny_run_args(
            tiny_models["gpt2"], articles, output, "--methods", "lora", "--epochs", "3", "--seed", "5", "--in-process"
        )

    def log(output) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in MethodDir(output / "lora").read_log()]

    assert main(args(tmp_path / "reference")) == 0
    save, saves = checkpoint.save, []

    def crash_before_second_save(*args, **kwargs):
        saves.append(1)
        if len(saves) == 2:
            raise Crash
        return save(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "save", crash_before_second_save)
    output = tmp_path / "interrupted"
    assert main(args(output)) == 1
    assert [r["epoch"] for r in log(output) if r["split"] == "validation"] == [0, 1, 2]  # epoch 2 logged, not saved
    monkeypatch.setattr(checkpoint, "save", save)
    assert main(args(output)) == 0
    assert log(output) == log(tmp_path / "reference")
    assert [r["step"] for r in log(output) if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]
