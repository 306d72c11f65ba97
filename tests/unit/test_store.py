"""The output folder: atomic writes, paths kept inside OUTPUT, a method directory's states, the lock, and the typed
records' JSON round trips."""

from __future__ import annotations

import json
import os
import stat

import pytest

from peftbench.errors import ConfigError
from peftbench.store import (
    records,  # records.TestMetrics: a Test* name imported here would look like a test class
    rundir,
)
from peftbench.store.records import Efficiency, EpochMetrics, MethodResult, Progress
from peftbench.store.rundir import MethodDir

pytestmark = pytest.mark.fast


def _result(method: str = "lora") -> MethodResult:
    efficiency = Efficiency(
        trainable_params=1234,
        trainable_pct=0.5,
        peak_train_memory_bytes=10_000,
        memory_measure="peak_rss",
        train_seconds=1.5,
        train_tokens_per_s=100.0,
        train_samples_per_s=2.0,
        eval_generate_tokens_per_s=50.0,
        latency_ms={"base": 1.0, "unmerged": 2.0, "merged": None},
        latency_new_tokens=8,
        merge_check=None,
        adapter_size_bytes=4096,
        phase_seconds={"training": 1.5},
    )
    return MethodResult(
        method=method,
        model="tiny",
        dataset="articles.jsonl",
        trainable_params=1234,
        total_params=246_800,
        config={"lr": 1e-3, "metrics": ["rougeL", "bleu"], "primary_metric": "rougeL"},
        epochs=[EpochMetrics(0, None, 9.5, {"rougeL": 0.1}), EpochMetrics(1, 8.0, 7.5, {"rougeL": 0.2})],
        test=records.TestMetrics(7.4, {"rougeL": 0.21, "bleu": 0.05}),
        efficiency=efficiency,
        environment={"torch": "2"},
    )


# ---------------------------------------------------------------------------------------------- atomic writes


def test_write_atomic_writes_str_and_bytes_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    rundir.write_atomic(path, "first")
    assert path.read_text() == "first"
    rundir.write_atomic(path, b"second \xff")
    assert path.read_bytes() == b"second \xff"
    assert [p.name for p in path.parent.iterdir()] == ["a.txt"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # readable by others, unlike mkstemp's own files


def test_write_files_writes_all_of_them(tmp_path):
    files = {tmp_path / "a.json": "A", tmp_path / "deep" / "b.json": b"B"}
    rundir.write_files(files)
    assert {path: path.read_bytes() for path in files} == {
        tmp_path / "a.json": b"A",
        tmp_path / "deep" / "b.json": b"B",
    }


def test_write_files_replaces_none_when_one_fails(tmp_path):
    first, blocker = tmp_path / "a.json", tmp_path / "blocker"
    first.write_text("old")
    blocker.write_text("a file where a folder should be")
    with pytest.raises(OSError):
        rundir.write_files({first: "new", blocker / "b.json": "new"})
    assert first.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "blocker"]  # no temporary left behind


def test_write_directory_is_all_or_nothing(tmp_path):
    target = tmp_path / "adapter"
    rundir.write_directory(target, lambda staging: (staging / "w.bin").write_bytes(b"1"))
    assert (target / "w.bin").read_bytes() == b"1"

    def fail(staging):
        (staging / "w.bin").write_bytes(b"2")
        raise RuntimeError("fill failed")

    with pytest.raises(RuntimeError, match="fill failed"):
        rundir.write_directory(target, fail)
    assert (target / "w.bin").read_bytes() == b"1"  # the older one is whole
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]  # and no staging directory is left


def test_set_aside_renames_and_replaces_an_older_copy(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("garbled 1")
    aside = rundir.set_aside(path)
    assert aside == tmp_path / "metrics.json.corrupt" and aside.read_text() == "garbled 1" and not path.exists()
    path.write_text("garbled 2")
    assert rundir.set_aside(path).read_text() == "garbled 2"
    folder = tmp_path / "epoch-3"
    folder.mkdir()
    (folder / "state.pt").write_bytes(b"x")
    assert (rundir.set_aside(folder) / "state.pt").read_bytes() == b"x" and not folder.exists()


# ---------------------------------------------------------------------------------------------- paths


def test_inside_accepts_a_plain_name(tmp_path):
    assert rundir.inside(tmp_path, "lora", "method directory") == tmp_path / "lora"


@pytest.mark.parametrize("name", ["../x", "a/b", "..", "/etc/passwd"])
def test_inside_refuses_names_that_escape(tmp_path, name):
    with pytest.raises(ConfigError, match="would lie outside"):
        rundir.inside(tmp_path, name, "method directory")


def test_inside_refuses_a_symlink_leading_out(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    output = tmp_path / "out"
    output.mkdir()
    (output / "lora").symlink_to(outside)
    with pytest.raises(ConfigError, match="symlink leading out of"):
        rundir.inside(output, "lora", "method directory")
    with pytest.raises(ConfigError, match="symlink leading out of"):
        rundir.method_dir(output, "lora")


def test_a_method_file_linked_out_is_refused(tmp_path):
    target = tmp_path / "stolen.json"
    target.write_text("{}")
    directory = MethodDir(tmp_path / "lora")
    directory.path.mkdir()
    (directory.path / "metrics.json").symlink_to(target)
    with pytest.raises(ConfigError, match="symlink"):
        directory.check()
    with pytest.raises(ConfigError, match="symlink"):
        directory.write_result(_result())
    assert target.read_text() == "{}"


def test_write_tree_refuses_paths_outside_before_writing_any(tmp_path):
    with pytest.raises(ConfigError, match="would lie outside"):
        rundir.write_tree(tmp_path, {"ok.txt": b"1", "../escape.txt": b"2"})
    assert list(tmp_path.iterdir()) == []
    rundir.write_tree(tmp_path, {"trials/a/trial.json": b"{}"})
    assert rundir.read_tree(tmp_path) == {"trials/a/trial.json": b"{}"}


# ---------------------------------------------------------------------------------------------- a method's directory


def test_an_empty_method_directory_is_not_finished(tmp_path):
    directory = MethodDir(tmp_path / "lora")
    assert directory.name == "lora" and directory.comparison == tmp_path
    assert not directory.has_run() and not directory.finished() and not directory.finished_whole()
    assert not directory.holds_work()
    assert directory.damage() == {}
    assert directory.read_failure() == {} and directory.read_predictions() == [] and directory.read_log() == []


def test_a_written_result_is_finished_and_reads_back(tmp_path):
    directory = MethodDir(tmp_path / "lora")
    result = _result()
    directory.write_result(result)
    assert directory.finished() and directory.finished_whole() and directory.has_run() and directory.holds_work()
    assert directory.read_result() == result
    assert rundir.method_dirs(tmp_path) == [directory]


def test_a_garbled_result_is_finished_but_not_complete(tmp_path):
    directory = MethodDir(tmp_path / "lora")
    directory.write_result(_result())
    text = directory.metrics.read_text()
    directory.metrics.write_text(text[: len(text) // 2])  # cut short
    assert directory.finished() and not directory.finished_whole()
    assert directory.damage()["metrics.json"].startswith("unreadable (JSONDecodeError")


@pytest.mark.parametrize(
    ("where", "value", "named"),
    [
        (("test", "rougeL"), "0.2", "test.scores['rougeL'] is '0.2', not float"),
        (("trainable_params",), True, "trainable_params is True, not int"),
        (("efficiency", "latency_ms"), [1.0], "efficiency.latency_ms is [1.0], not dict"),
        (("epochs",), {"epoch": 0}, "epochs is {'epoch': 0}, not list"),
        ((), [], "metrics is [], not dict"),
    ],
)
def test_a_result_of_wrong_types_is_damaged_naming_the_field(where, value, named, tmp_path):
    """A metrics.json that parses but holds a value of the wrong type reads as damaged, not as a traceback later."""
    directory = MethodDir(tmp_path / "lora")
    directory.write_result(_result())
    data = json.loads(directory.metrics.read_text())
    if where:
        target = data
        for key in where[:-1]:
            target = target[key]
        target[where[-1]] = value
    directory.metrics.write_text(json.dumps(data if where else value))
    assert named in directory.damage()["metrics.json"]
    with pytest.raises(TypeError, match=named.split(" is ")[0].replace("[", r"\[")):
        directory.read_result()


def test_the_files_a_result_stands_on_are_checked_against_its_checksums(tmp_path):
    directory = MethodDir(tmp_path / "lora")
    directory.write_predictions([{"id": "a", "source": "s", "reference": "r", "prediction": "p"}])
    (directory.adapter).mkdir()
    (directory.adapter / "adapter_model.safetensors").write_bytes(b"weights")
    directory.write_result(_result())
    assert set(json.loads(directory.metrics.read_text())["files"]) == {
        "predictions.jsonl",
        "adapter/adapter_model.safetensors",
    }
    directory.card.write_text("a model card, rewritten by every report")
    assert directory.damage() == {} and directory.finished_whole()
    directory.predictions.write_text("{")  # a 1-byte file where the predictions were
    (directory.adapter / "adapter_model.safetensors").unlink()
    damaged = directory.damage()
    assert damaged.keys() == {"predictions.jsonl", "adapter/adapter_model.safetensors"}
    assert "checksum in metrics.json differs" in damaged["predictions.jsonl"]
    assert damaged["adapter/adapter_model.safetensors"] == "missing"
    assert directory.damage(("predictions.jsonl",)).keys() == {"predictions.jsonl"}
    assert not directory.finished_whole()


def test_remove_deletes_only_what_peftbench_wrote(tmp_path):
    directory = MethodDir(tmp_path / "lora")
    directory.write_result(_result())
    directory.write_predictions([])
    (directory.checkpoints / "epoch-1").mkdir(parents=True)
    (directory.path / "metrics.json.corrupt").write_text("set aside earlier")
    (directory.path / f"{rundir.STAGING_PREFIX}metrics.json.x1").write_text("a killed write")
    (directory.path / "notes.txt").write_text("the user's")
    directory.remove()
    assert sorted(path.name for path in directory.path.iterdir()) == ["metrics.json.corrupt", "notes.txt"]
    (directory.path / "notes.txt").unlink()
    (directory.path / "metrics.json.corrupt").unlink()
    directory.remove()
    assert not directory.path.exists()  # nothing else was there: the directory goes too


def test_a_failure_is_a_result_but_not_finished(tmp_path):
    directory = MethodDir(tmp_path / "ia3")
    directory.write_failure("ia3", "tiny", 0, "boom")
    assert directory.has_run() and not directory.finished()
    assert directory.read_failure() == {"method": "ia3", "model": "tiny", "seed": 0, "error": "boom"}
    directory.clear_failure()
    assert directory.read_failure() == {} and not directory.has_run()


def test_predictions_round_trip_and_skip_damaged_lines(tmp_path):
    directory = MethodDir(tmp_path / "lora")
    rows = [
        {"id": "a", "source": "s\u2028t", "reference": "r", "prediction": "p"},  # U+2028 is not a line end
        {"id": "b", "source": "s", "reference": "r", "prediction": "q", "rougeL": 0.5},
    ]
    directory.write_predictions(rows)
    assert directory.read_predictions() == rows
    with directory.predictions.open("a") as stream:
        stream.write('{"id": "c", "sour\n{"id": "d"}\n')  # cut short, and a row missing its fields
    assert directory.read_predictions() == rows


def test_keep_log_cuts_the_log_back(tmp_path):
    directory = MethodDir(tmp_path / "lora")
    for step in range(1, 5):
        directory.append_log({"split": "train", "step": step})
    assert [record["step"] for record in directory.read_log()] == [1, 2, 3, 4]
    directory.keep_log(2)
    assert [record["step"] for record in directory.read_log()] == [1, 2]
    directory.keep_log(0)
    assert directory.read_log() == []


def test_seed_directories_are_found_with_their_seed(tmp_path):
    assert rundir.seed_dir(tmp_path, 3, several=False) == tmp_path
    for seed in (2, 10):
        rundir.seed_dir(tmp_path, seed, several=True).mkdir()
    (tmp_path / "seed-x").mkdir()  # not a seed
    assert rundir.comparisons(tmp_path) == [(tmp_path, None), (tmp_path / "seed-10", 10), (tmp_path / "seed-2", 2)]


# ---------------------------------------------------------------------------------------------- the lock


def test_locked_refuses_a_second_holder_naming_the_first(tmp_path):
    with rundir.locked(tmp_path):
        holder = json.loads((tmp_path / rundir.LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid()
        with pytest.raises(ConfigError, match=f"in use by another peftbench run \\(PID {os.getpid()}, started "):
            with rundir.locked(tmp_path):
                pass
    with rundir.locked(tmp_path):  # released on the way out
        pass


def test_remove_if_unused_keeps_an_output_with_results(tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    with rundir.locked(output):
        pass
    (output / "summary.md").write_text("x")
    rundir.remove_if_unused(output)
    assert output.is_dir()
    (output / "summary.md").unlink()
    rundir.remove_if_unused(output)
    assert not output.exists()


# ---------------------------------------------------------------------------------------------- records


def test_temporaries_of_killed_writes_are_swept_only_by_the_lock_holder(tmp_path):
    left = [tmp_path / "report_files" / f"{rundir.STAGING_PREFIX}a.png.k2", tmp_path / f"{rundir.STAGING_PREFIX}x"]
    left[0].parent.mkdir()
    left[0].write_text("half a figure")
    (left[1] / "epoch-1").mkdir(parents=True)
    (tmp_path / ".report.md.kept").write_text("not one of peftbench's temporaries")
    rundir.sweep_if_idle(tmp_path)  # no lock file: not a peftbench run, nothing touched
    assert all(path.exists() for path in left)
    with rundir.locked(tmp_path):  # a run sweeps as it starts; a report while it runs does not
        assert not any(path.exists() for path in left)
        left[0].write_text("a live run's write")
        rundir.sweep_if_idle(tmp_path)
        assert left[0].exists()
    rundir.sweep_if_idle(tmp_path)
    assert not left[0].exists() and (tmp_path / ".report.md.kept").exists()


def test_an_output_of_someone_else_is_refused_and_never_overwritten(tmp_path):
    output = tmp_path / "mine"
    output.mkdir()
    names = rundir.layout_names([0], ["lora"])
    rundir.check_owner(output, names, others_allowed=False)  # empty: fine
    (output / "report.md").write_text("my own report")
    (output / "data.csv").write_text("x")
    with pytest.raises(ConfigError, match=r"not empty and holds no peftbench run \(data.csv, report.md\)"):
        rundir.check_owner(output, names, others_allowed=False)
    with pytest.raises(ConfigError, match="holds report.md, which peftbench did not write"):
        rundir.check_owner(output, names, others_allowed=True)
    (output / "report.md").unlink()
    rundir.check_owner(output, names, others_allowed=True)  # beside data.csv, nothing of it touched
    (output / "seed-1").mkdir()
    with pytest.raises(ConfigError, match="holds seed-1"):
        rundir.check_owner(output, rundir.layout_names([0, 1], ["lora"]), others_allowed=True)
    rundir.claim(output)  # now peftbench's (as a run or a report leaves it)
    rundir.check_owner(output, names, others_allowed=False)


def test_method_result_round_trips_through_json():
    result = _result()
    data = json.loads(json.dumps(result.to_dict()))
    assert data["epochs"][1] == {"epoch": 1, "train_loss": 8.0, "val_loss": 7.5, "rougeL": 0.2}  # flat scores
    assert data["test"] == {"loss": 7.4, "rougeL": 0.21, "bleu": 0.05}
    assert MethodResult.from_dict(data) == result


def test_method_result_reads_without_optional_parts_and_ignores_unknown_keys():
    bare = MethodResult("full", "tiny", "d", 10, 10, {})
    data = bare.to_dict() | {"a_later_field": 1}
    assert MethodResult.from_dict(data) == bare
    assert bare.primary_metric == "rougeL" and bare.metrics == [] and not bare.random_weights


def test_method_result_derived_figures():
    result = _result()
    assert result.metrics == ["rougeL", "bleu"] and result.primary_metric == "rougeL"
    assert result.efficiency.deployed == "unmerged"  # no merged latency: it is served unmerged


def test_progress_round_trips_and_adds_up():
    progress = Progress(epochs=[EpochMetrics(0, None, 9.0, {"bleu": 0.1})], log_lines=4)
    progress.add_phases({"training": 2.0}, {"training": 0.5})
    progress.add_phases({"training": 1.0, "saving": 0.25}, {})
    progress.add_generation(30, 1.5)
    progress.add_generation(10, 0.5)
    assert progress.phase_seconds == {"training": 3.0, "saving": 0.25}
    assert progress.phase_other_cpu_seconds == {"training": 0.5}
    assert progress.generated_tokens == 40 and progress.generate_tokens_per_s == pytest.approx(20.0)
    assert Progress.from_dict(json.loads(json.dumps(progress.to_dict()))) == progress
    assert Progress().generate_tokens_per_s == 0.0
