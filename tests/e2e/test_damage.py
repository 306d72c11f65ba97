"""Nothing lost, nothing trusted unread: a folder of someone else's is never written into or deleted from, and a
damaged record (a result, the predictions it stands on, a fingerprint, a reference, a trial) is named when read, set
aside, and its work done again by the next run, the same way for each."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from peftbench.cli import main
from peftbench.store.rundir import STAGING_PREFIX
from tests.helpers import grid_search, tiny_run_args


def _args(tiny_models, articles, output: Path, *extra: str) -> list[str]:
    return tiny_run_args(tiny_models["gpt2"], articles, output, "--methods", "lora,ia3", "--epochs", "1", *extra)


@pytest.fixture(scope="module")
def finished_run(tiny_models, articles, tmp_path_factory) -> Path:
    """LoRA and IA3 finished on the tiny GPT-2 (each test damages a copy of it)."""
    output = tmp_path_factory.mktemp("finished") / "out"
    assert main(_args(tiny_models, articles, output, "--in-process")) == 0
    return output


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    output = tmp_path / "out"
    shutil.copytree(finished_run, output)
    return output


def _rerun(tiny_models, articles, output: Path, capsys) -> str:
    """Run the same configuration again; its stderr (the run must succeed, without a traceback)."""
    capsys.readouterr()
    assert main(_args(tiny_models, articles, output, "--in-process")) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# ---------------------------------------------------------------------------------------------- someone else's files


def test_a_folder_of_someone_else_is_refused(tiny_models, articles, tmp_path, capsys):
    output = tmp_path / "mine"
    output.mkdir()
    (output / "report.md").write_text("my report")
    (output / "summary.md").write_text("my summary")
    assert main(_args(tiny_models, articles, output)) == 2
    err = capsys.readouterr().err
    assert "not empty and holds no peftbench run (report.md, summary.md)" in err and "--allow-other-files" in err
    assert sorted(p.name for p in output.iterdir()) == ["report.md", "summary.md"]
    assert (output / "report.md").read_text() == "my report"


def test_allowed_other_files_are_written_beside_never_over(tiny_models, articles, tmp_path, capsys):
    output = tmp_path / "mine"
    output.mkdir()
    (output / "report.md").write_text("my report")
    assert main(_args(tiny_models, articles, output, "--allow-other-files", "--dry-run")) == 2
    assert "holds report.md, which peftbench did not write" in capsys.readouterr().err
    (output / "report.md").rename(output / "notes.md")
    assert main(_args(tiny_models, articles, output, "--allow-other-files", "--methods", "lora", "--in-process")) == 0
    assert (output / "notes.md").read_text() == "my report" and (output / "report.md").is_file()


@pytest.mark.parametrize("given", ["", "  "])
def test_an_empty_output_is_an_error(given, tiny_models, articles, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = _args(tiny_models, articles, Path("placeholder"))
    args[args.index("--output") + 1] = given
    assert main(args) == 2
    assert f"--output {given!r} is empty" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_force_deletes_only_what_peftbench_wrote(run_copy, tiny_models, articles, capsys):
    (run_copy / "lora" / "my-notes.txt").write_text("the user's")
    assert main(_args(tiny_models, articles, run_copy, "--methods", "lora", "--force", "--in-process")) == 0
    assert (run_copy / "lora" / "my-notes.txt").read_text() == "the user's"
    assert (run_copy / "lora" / "metrics.json").is_file()


def test_an_output_that_is_a_file_is_named(tiny_models, articles, tmp_path, capsys):
    given = tmp_path / "results"
    given.write_text("a file of the user's")
    assert main(_args(tiny_models, articles, given)) == 2
    assert f"--output '{given}' is a file, not a folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("path", "kind"), [("ia3", "a file"), ("summary.md", "a folder"), ("lora/fingerprint.json", "a folder")]
)
def test_the_other_kind_of_thing_where_peftbench_writes_is_refused(path, kind, run_copy, tiny_models, articles, capsys):
    """A folder where peftbench writes a file, or a file where it keeps a folder, is not peftbench's to replace."""
    target = run_copy / path
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    target.write_text("the user's") if kind == "a file" else target.mkdir()
    capsys.readouterr()
    assert main(_args(tiny_models, articles, run_copy, "--in-process")) == 2
    err = capsys.readouterr().err
    assert f"'{target}' is {kind} where peftbench writes" in err and "Traceback" not in err


def test_report_writes_into_a_folder_of_someone_else_only_beside_its_files(run_copy, tmp_path, capsys):
    destination = tmp_path / "shared"
    destination.mkdir()
    (destination / "report.md").write_text("my report")
    for extra in ([], ["--allow-other-files"]):
        assert main(["report", str(run_copy), "--output", str(destination), *extra]) == 2
    assert "holds report.md, which peftbench did not write" in capsys.readouterr().err
    assert (destination / "report.md").read_text() == "my report"
    (destination / "report.md").rename(destination / "mine.md")
    assert main(["report", str(run_copy), "--output", str(destination), "--allow-other-files"]) == 0
    assert main(["report", str(run_copy), "--output", str(destination)]) == 0  # now peftbench's folder too
    assert (destination / "mine.md").read_text() == "my report" and (destination / "report.md").is_file()


def test_report_refuses_an_output_given_twice(run_copy, capsys):
    assert main(["report", str(run_copy), str(run_copy / ".")]) == 2
    assert "is given twice" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- damaged records


def _write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value))


# What a user (or a disk) does to a finished record: the method, the file, how, and whether the report reads it.
DAMAGE = {
    "predictions cut to a byte": ("lora", "predictions.jsonl", lambda p: p.write_text("{"), True),
    "a result of a wrong type": (
        "lora",
        "metrics.json",
        lambda p: _write_json(p, json.loads(p.read_text()) | {"total_params": "many"}),
        True,
    ),
    "another method's result": ("ia3", "metrics.json", lambda p: shutil.copy(p.parents[1] / "lora" / p.name, p), True),
    "a log cut short": ("ia3", "log.jsonl", lambda p: p.write_text(p.read_text()[:-30]), True),
    "the zero-shot reference's predictions": ("zero-shot", "predictions.jsonl", lambda p: p.write_text(""), True),
    "the adapter's weights deleted": ("lora", "adapter/adapter_model.safetensors", Path.unlink, False),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_record_is_named_by_report_and_redone_by_run(case, run_copy, tiny_models, articles, capsys):
    """report names the file it reads, leaves its run out and exits 2; the next run sets the damage aside and does
    that run again, while the other finished method is skipped; then report is whole again."""
    method, name, damage, read = DAMAGE[case]
    before = {m: (run_copy / m / "metrics.json").read_bytes() for m in ("lora", "ia3")}
    damage(run_copy / method / name)
    damaged_file_left = (run_copy / method / name).exists()
    capsys.readouterr()
    assert main(["report", str(run_copy)]) == (2 if read else 0)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert not read or f"{run_copy / method / name}: " in err and "does those runs again" in err
    err = _rerun(tiny_models, articles, run_copy, capsys)
    assert f"{method}/{name} (" in err and "set aside as" in err
    assert (run_copy / method / f"{name}.corrupt").exists() == damaged_file_left
    after = {m: (run_copy / m / "metrics.json").read_bytes() for m in ("lora", "ia3")}
    assert [m for m in after if after[m] != before[m]] == ([] if method == "zero-shot" else [method])  # the rest kept
    assert main(["report", str(run_copy)]) == 0


@pytest.mark.parametrize("fingerprint", ["{not json", '{"settings": []}', '{"fingerprint": "x", "settings": {}}'])
def test_a_damaged_fingerprint_redoes_that_method_alone(fingerprint, run_copy, tiny_models, articles, capsys):
    """Not 'a different configuration' (whose only way out, --force, loses every method's results): the method
    whose fingerprint is damaged is set aside and done again, the others kept; the zero-shot reference alike."""
    kept = (run_copy / "ia3" / "metrics.json").read_bytes()
    (run_copy / "lora" / "fingerprint.json").write_text(fingerprint)
    (run_copy / "zero-shot" / "fingerprint.json").write_text(fingerprint)
    err = _rerun(tiny_models, articles, run_copy, capsys)
    for name in ("lora", "zero-shot"):
        assert f"{name}/fingerprint.json (unreadable, or not a fingerprint): set aside" in err
        assert (run_copy / name / "fingerprint.json.corrupt").read_text() == fingerprint
        assert (run_copy / name / "metrics.json.corrupt").is_file()
    assert "different configuration" not in err
    assert (run_copy / "ia3" / "metrics.json").read_bytes() == kept


def test_a_result_that_is_a_folder_is_named_by_report(run_copy, capsys):
    metrics = run_copy / "ia3" / "metrics.json"
    metrics.unlink()
    metrics.mkdir()
    capsys.readouterr()
    assert main(["report", str(run_copy)]) == 2
    assert f"{metrics}: unreadable (IsADirectoryError" in capsys.readouterr().err


def test_a_record_linked_out_of_its_folder_is_not_read(run_copy, tmp_path, tiny_models, articles, capsys):
    predictions = run_copy / "lora" / "predictions.jsonl"
    outside = tmp_path / "elsewhere.jsonl"
    predictions.rename(outside)
    predictions.symlink_to(outside)
    capsys.readouterr()
    assert main(["report", str(run_copy)]) == 2
    assert f"{predictions}: leads out of" in capsys.readouterr().err
    assert main(_args(tiny_models, articles, run_copy, "--in-process")) == 2  # a run never writes through it
    assert f"'{predictions}' is a symlink leading out of" in capsys.readouterr().err


def test_report_removes_what_a_killed_write_left(run_copy, capsys):
    left = run_copy / "report_files" / f"{STAGING_PREFIX}lora-curves.png.abc123"
    left.write_bytes(b"half a figure")
    assert main(["report", str(run_copy)]) == 0
    assert not left.exists() and (run_copy / "report.md").is_file()


def test_a_damaged_trial_record_trains_that_trial_again(tiny_models, articles, tmp_path, capsys):
    output = tmp_path / "search"
    args = tiny_run_args(tiny_models["gpt2"], articles, output, *grid_search("lora", "1e-4,3e-3"), "--in-process")
    assert main(args) == 0
    trial = sorted((output / "lora" / "trials").iterdir())[0]
    _write_json(trial / "trial.json", json.loads((trial / "trial.json").read_text()) | {"epochs": "none"})
    (output / "lora" / "metrics.json").unlink()  # as if killed before the selected trial was tested
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"trial {trial.name} trains again: {trial.name}/trial.json (unreadable (TypeError: epochs is 'none'" in err
    assert (trial / "trial.json.corrupt").is_file() and json.loads((trial / "trial.json").read_text())["epochs"]
    assert (output / "lora" / "metrics.json").is_file()
