"""The per-method search: trials trained and validated in their own directories, the best on validation selected and
alone tested, resume and a grown grid redoing no finished trial, successive halving, the report's search section, and
bad input refused before any model loads."""

from __future__ import annotations

import inspect
import json
import math

import pytest

from peftbench.cli import main
from peftbench.pipeline import search
from peftbench.store.records import EpochMetrics
from peftbench.training.evaluate import Evaluator
from peftbench.training.trainer import Trainer
from tests.helpers import grid_search, killed_at, tiny_run_args

GRID = ("--lr-grid", "1e-4,3e-3,3e-2")


def _args(model, data, output, *extra: str) -> list[str]:
    return tiny_run_args(
        model,
        data,
        output,
        "--methods",
        "lora",
        "--epochs",
        "1",
        "--search",
        "lr",
        *GRID,
        "--search-trials",
        "3",
        "--in-process",
        *extra,
    )


def _trials(output, method: str = "lora") -> dict[str, dict]:
    """Each trial's record (trial.json), by trial name."""
    records = sorted((output / method / "trials").glob("*/trial.json"))
    return {path.parent.name: json.loads(path.read_text()) for path in records}


@pytest.fixture
def counted(monkeypatch) -> dict[str, list]:
    """The real Trainer.train_epoch and Evaluator.evaluate, counted: epochs trained, and evaluations by name."""
    calls: dict[str, list] = {"epochs": [], "evaluations": []}
    train_epoch, evaluate = Trainer.train_epoch, Evaluator.evaluate

    def counting_train_epoch(self):
        calls["epochs"].append(self.epoch + 1)
        return train_epoch(self)

    def counting_evaluate(self, *args, **kwargs):
        bound = inspect.signature(evaluate).bind(self, *args, **kwargs)
        bound.apply_defaults()
        calls["evaluations"].append(bound.arguments["desc"])
        return evaluate(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_epoch", counting_train_epoch)
    monkeypatch.setattr(Evaluator, "evaluate", counting_evaluate)
    return calls


def test_search_selects_on_validation_and_tests_the_selected_trial_alone(tiny_gpt2, articles, tmp_path, counted):
    output = tmp_path / "search"
    assert main(_args(tiny_gpt2, articles, output)) == 0
    trials = _trials(output)
    assert set(trials) == {"lr-1e-04", "lr-3e-03", "lr-3e-02"}
    losses = {name: record["epochs"][-1]["val_loss"] for name, record in trials.items()}
    assert len(set(losses.values())) == 3  # the learning rates made a difference
    metrics = json.loads((output / "lora" / "metrics.json").read_text())
    assert metrics["search"]["selected"] == min(losses, key=losses.get)
    assert metrics["config"]["lr"] == metrics["search"]["lr"] == trials[min(losses, key=losses.get)]["config"]["lr"]
    assert metrics["epochs"] == trials[metrics["search"]["selected"]]["epochs"]
    recorded = {trial["name"]: trial["epochs"][-1]["val_loss"] for trial in metrics["search"]["trials"]}
    assert recorded == losses

    # No trial touched the test split: one test evaluation (the selected trial's, from its checkpoint), and no
    # trial holds a test figure or predictions.
    assert counted["evaluations"].count("test") == 1
    assert counted["epochs"] == [1, 1, 1]  # each trial trained its epoch once; finishing trained nothing
    for name, record in trials.items():
        assert record["test"] is None and record["efficiency"] is None
        place = output / "lora" / "trials" / name
        assert not (place / "predictions.jsonl").exists() and not (place / "metrics.json").exists()
        assert (place / "fingerprint.json").is_file()
        assert not (place / "checkpoint").exists()  # tested, or lost to it: nothing left to resume

    # The selected trial's result is what a plain run at its learning rate gives.
    plain = tmp_path / "plain"
    lr = f"{metrics['search']['lr']:g}"
    assert (
        main(
            tiny_run_args(tiny_gpt2, articles, plain, "--methods", "lora", "--epochs", "1", "--lr", lr, "--in-process")
        )
        == 0
    )
    reference = json.loads((plain / "lora" / "metrics.json").read_text())
    assert reference["epochs"] == metrics["epochs"] and reference["test"] == metrics["test"]

    # The report: the chosen lr in the table, the sensitivity plot and every trial, no "not tuned" caution; the
    # plain run keeps that caution.
    summary = (output / "summary.md").read_text()
    assert "selected lr" in summary and f"| {lr} |" in summary
    assert "not tuned" not in summary and "not tuned" in (plain / "summary.md").read_text()
    at_end = metrics["search"]["lr"] in (1e-4, 3e-2)  # the grid's ends: the best may lie beyond, and it says so
    assert ("lies at an end of its grid for lora" in summary) == at_end
    report = (output / "report.md").read_text()
    assert "### Search" in report and "sensitivity.png" in report
    assert report.count("trained, not selected") == 2 and report.count("selected: tested") == 1
    exported = (output / "results.csv").read_text().splitlines()
    assert "search_selected" in exported[0]


def test_search_killed_midway_resumes_without_redoing_a_trial(tiny_gpt2, articles, tmp_path, counted, capsys):
    output = tmp_path / "interrupted"
    second = output / "lora" / "trials" / "lr-3e-03" / "checkpoint" / "epoch-1"
    killed_at(_args(tiny_gpt2, articles, output), second, saves=2)  # the first trial done, the second checkpointed
    first = output / "lora" / "trials" / "lr-1e-04" / "trial.json"
    assert first.is_file() and not (second.parent.parent / "trial.json").exists()
    assert not (output / "lora" / "metrics.json").exists()
    before = first.stat().st_mtime_ns

    assert main(_args(tiny_gpt2, articles, output)) == 0
    assert counted["epochs"] == [1]  # the third trial's; the first was done, the second resumed from its checkpoint
    assert counted["evaluations"].count("validate epoch 1") == 1 and counted["evaluations"].count("test") == 1
    assert first.stat().st_mtime_ns == before
    assert set(_trials(output)) == {"lr-1e-04", "lr-3e-03", "lr-3e-02"}
    metrics = json.loads((output / "lora" / "metrics.json").read_text())
    losses = {name: record["epochs"][-1]["val_loss"] for name, record in _trials(output).items()}
    assert metrics["search"]["selected"] == min(losses, key=losses.get)

    # A grid point added later trains alone; the result is re-tested only if the selection changes.
    counted["epochs"].clear(), counted["evaluations"].clear()
    assert main(_args(tiny_gpt2, articles, output, "--lr-grid", "1e-4,3e-3,3e-2,1e-6", "--search-trials", "4")) == 0
    assert counted["epochs"] == [1]
    grown = json.loads((output / "lora" / "metrics.json").read_text())
    losses["lr-1e-06"] = _trials(output)["lr-1e-06"]["epochs"][-1]["val_loss"]
    assert grown["search"]["selected"] == min(losses, key=losses.get)
    assert [t["name"] for t in grown["search"]["trials"]] == ["lr-1e-06", "lr-1e-04", "lr-3e-03", "lr-3e-02"]
    changed = grown["search"]["selected"] != metrics["search"]["selected"]
    assert counted["evaluations"].count("test") == int(changed)
    assert (grown["test"] == metrics["test"]) or changed

    capsys.readouterr()
    grid = ("--lr-grid", "1e-4,3e-3,3e-2,1e-6,1e-1", "--search-trials", "6")
    assert main(_args(tiny_gpt2, articles, output, *grid, "--dry-run")) == 0
    plan = capsys.readouterr().out
    assert "6 trials (lr-1e-06, lr-1e-04, lr-3e-03, lr-3e-02, lr-1e-01, then 1 placed by the search)" in plan
    assert "1 epoch each: 6 trial-epochs in all; limits: lr 1e-06 to 0.1" in plan
    assert plan.count(": trained: skipped") == 4 and "lr-1e-01: runs" in plan and "Estimated total" in plan


def test_halving_stops_the_worse_half_after_each_epoch(tiny_gpt2, articles, tmp_path, counted):
    output = tmp_path / "halving"
    assert main(_args(tiny_gpt2, articles, output, "--epochs", "2", "--search-halving")) == 0
    metrics = json.loads((output / "lora" / "metrics.json").read_text())
    trials = {t["name"]: t for t in metrics["search"]["trials"]}
    after_one = {name: t["epochs"][1]["val_loss"] for name, t in trials.items()}
    worst = max(after_one, key=after_one.get)
    assert trials[worst]["stopped_after"] == 1 and [e["epoch"] for e in trials[worst]["epochs"]] == [0, 1]
    going_on = [name for name in trials if name != worst]  # 3 trials: the better two (half, rounded up) go on
    assert all(trials[name]["stopped_after"] is None and trials[name]["epochs"][-1]["epoch"] == 2 for name in going_on)
    assert metrics["search"]["selected"] == min(going_on, key=lambda name: trials[name]["epochs"][-1]["val_loss"])
    assert sorted(counted["epochs"]) == [1, 1, 1, 2, 2]  # 3 trials x epoch 1, then the two kept x epoch 2
    assert (output / "lora" / "trials" / worst / "checkpoint" / "epoch-1").is_dir()  # a larger grid may revive it
    assert "stopped after epoch 1 (halving)" in (output / "report.md").read_text()


def test_without_halving_every_trial_trains_every_epoch(tiny_gpt2, articles, tmp_path, counted):
    output = tmp_path / "whole"
    assert main(_args(tiny_gpt2, articles, output, "--epochs", "2", "--no-search-halving")) == 0
    search = json.loads((output / "lora" / "metrics.json").read_text())["search"]
    assert not search["halving"] and search["trial_epochs"] == 6
    assert all(t["stopped_after"] is None and t["epochs"][-1]["epoch"] == 2 for t in search["trials"])
    assert sorted(counted["epochs"]) == [1, 1, 1, 2, 2, 2]


def test_selection_is_on_the_validation_figure_lower_loss_higher_metric():
    trials = [search.Trial(1e-4), search.Trial(1e-3), search.Trial(1e-2)]
    epochs = [
        EpochMetrics(1, 1.0, 2.0, {"rougeL": 0.1}),
        EpochMetrics(1, 1.0, 1.5, {"rougeL": 0.05}),
        EpochMetrics(1, 1.0, math.nan, {"rougeL": 0.3}),
    ]
    loss = {t: search.figure(e, "loss") for t, e in zip(trials, epochs, strict=True)}
    rouge = {t: search.figure(e, "rougeL") for t, e in zip(trials, epochs, strict=True)}
    assert search.best_first(loss, "loss") == [trials[1], trials[0], trials[2]]  # NaN last
    assert search.best_first(rouge, "rougeL") == [trials[2], trials[0], trials[1]]
    # A third go on, at least two: the final choice is made at the full budget.
    assert [search.survivors(n) for n in (1, 2, 3, 5, 6, 7, 10)] == [1, 2, 2, 2, 2, 3, 4]
    assert search.trial_epochs(3, 2, halving=True) == 5 and search.trial_epochs(3, 2, halving=False) == 6
    assert search.trial_epochs(5, 2, halving=True) == 7 and search.trial_epochs(7, 3, halving=True) == 12


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--search", "lr", "--lr-grid", "1e-4,0"], "--lr-grid 0.0001,0: 0 is not a positive number"),
        (["--search", "lr", "--lr-grid", "1e-4,-3e-4"], "-0.0003 is not a positive number"),
        (["--search", "lr", "--lr-grid", "1e-4,fast"], "'fast' in '1e-4,fast' is not"),
        (["--search", "lr,lora_r", "--rank-grid", "4,8.5"], "'8.5' in '4,8.5' is not"),
        (["--search", "epochs"], "--search epochs is not searchable; choose from lr, lora_r"),
        (["--search", "lr,speed"], "--search speed is not a setting; choose from lr, lora_r"),
        (
            ["--search", "lr", "--select-by", "rougeX"],
            "--select-by 'rougeX' is not computed on validation; choose from loss, rouge1, rouge2, rougeL",
        ),
        (["--search", "lr", "--select-by", "accuracy"], "--select-by 'accuracy' is not computed"),
        (["--select-by", "rougeL"], "--select-by needs a search"),
        (
            ["--search", "lr", "--search-trials", "2"],
            "--search-trials 2 is fewer than the 3 trials of full's starting grid; give at least 3",
        ),
        (["--search", "lr", "--search-trials", "0"], "--search-trials must be a whole number at least 1, got 0"),
        (["--search", "lr", "--search-limit", "1"], "--search-limit must be a finite number greater than 1, got 1.0"),
        (["--lr-grid", "1e-4"], "--lr-grid is given but --search does not tune lr"),
        (
            ["--search", "lora_r", "--methods", "full,ia3"],
            "none of --methods full,ia3 has a rank; methods with one: lora, dora",
        ),
    ],
)
def test_bad_search_input_exits_2_before_any_model_loads(tmp_path, articles, capsys, flags, message):
    missing = tmp_path / "no-such-model"  # loading it would fail with another message: the check comes first
    assert main(tiny_run_args(missing, articles, tmp_path / "out", *flags)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_per_method_grids_in_yaml(tmp_path, articles, capsys):
    config = tmp_path / "search.yaml"
    config.write_text("search: [lr, lora_r]\nlr_grid:\n  lora: [1e-4, 2e-4]\n  ia3: [0.01]\nrank_grid:\n  ia3: [4]\n")
    assert main(tiny_run_args(tmp_path / "none", articles, tmp_path / "out", "--config", str(config))) == 2
    assert "rank_grid gives a grid for 'ia3', which has no rank" in capsys.readouterr().err
    config.write_text("search: [lr, lora_r]\nlr_grid:\n  lora: [1e-4, 2e-4]\n  ia3: [0.01]\nrank_grid: [4, 8]\n")
    from peftbench.config.run_config import build_config, load_yaml
    from peftbench.methods.registry import METHODS

    loaded = build_config(load_yaml(config), {"methods": "full,lora,ia3"})
    names = {m: [t.name for t in search.start_of(loaded, METHODS[m])] for m in loaded.methods}
    assert names == {
        "full": ["lr-1.67e-05", "lr-5e-05", "lr-1.5e-04"],
        "lora": ["lr-1e-04_r-4", "lr-1e-04_r-8", "lr-2e-04_r-4", "lr-2e-04_r-8"],
        "ia3": ["lr-1e-02"],
    }
    # The same budget for every method: the largest starting grid (lora's 4) and room to extend it twice.
    assert {search.plan_of(loaded, METHODS[m]).budget for m in loaded.methods} == {6}


def test_grids_and_halving_are_not_fingerprinted_but_the_search_and_its_rule_are():
    from peftbench.config.run_config import RunConfig
    from peftbench.store.fingerprints import fingerprinted

    searched = fingerprinted(RunConfig(search=["lr"]))
    grown = RunConfig(
        search=["lr", "lora_r"],
        lr_grid=[1e-4, 3e-4],
        rank_grid=[4],
        search_halving=False,
        search_trials=9,
        search_limit=10.0,
    )
    assert {k: v for k, v in fingerprinted(grown).items() if k != "search"} == {
        k: v for k, v in searched.items() if k != "search"
    }
    assert searched != fingerprinted(RunConfig())  # an untuned run's results are never taken for a search's
    assert searched != fingerprinted(RunConfig(search=["lr"], select_by="rougeL"))


def test_trials_run_in_processes_of_their_own_and_the_selected_trial_log_becomes_the_method_log(
    tiny_gpt2, articles, tmp_path
):
    output = tmp_path / "processes"
    args = tiny_run_args(tiny_gpt2, articles, output, *grid_search("ia3", "1e-3,3e-2"))
    assert main(args) == 0  # the local executor: the search in a process, each trial's stages in one of their own
    trials = _trials(output, "ia3")
    losses = {name: record["epochs"][-1]["val_loss"] for name, record in trials.items()}
    metrics = json.loads((output / "ia3" / "metrics.json").read_text())
    assert metrics["search"]["selected"] == min(losses, key=losses.get)
    assert metrics["epochs"] == trials[metrics["search"]["selected"]]["epochs"]
    selected_log = (output / "ia3" / "trials" / metrics["search"]["selected"] / "log.jsonl").read_text().splitlines()
    method_log = (output / "ia3" / "log.jsonl").read_text().splitlines()
    assert method_log[: len(selected_log)] == selected_log and json.loads(method_log[-1])["split"] == "test"
    assert not list(output.rglob("checkpoint"))  # the losers' and the tested one's checkpoints are removed


def _walk(config, method: str, figure_of) -> tuple[search.Plan, dict[search.Trial, float]]:
    """The points a search places on its first rung, given each point's validation figure (lower is better)."""
    from peftbench.methods.registry import METHODS

    plan = search.plan_of(config, METHODS[method])
    figures = {trial: figure_of(trial) for trial in plan.start}
    while len(figures) < plan.budget and (new := search.next_trial(figures, plan, "loss")) is not None:
        figures[new] = figure_of(new)
    return plan, figures


def _bowl(best_lr: float, best_rank: float = 8):
    """A validation loss lowest at best_lr (and best_rank), rising with the log distance from it."""
    return lambda t: math.log10(t.lr / best_lr) ** 2 + (math.log2((t.lora_r or best_rank) / best_rank) ** 2) / 10


def test_the_search_brackets_its_best_then_refines_within_its_budget():
    from peftbench.config.run_config import RunConfig

    # LoRA's default 5e-4: the grid 1.67e-4, 5e-4, 1.5e-3, and a best at 2e-2, beyond it.
    plan, figures = _walk(RunConfig(methods=["lora"], search=["lr"], search_trials=7), "lora", _bowl(2e-2))
    rates = sorted(t.lr for t in figures)
    assert rates == [1.67e-4, 5e-4, 1.5e-3, 4.5e-3, 1.35e-2, 2.34e-2, 4.05e-2]  # two steps out, one past, one between
    best = search.best_first(figures, "loss")[0]
    assert best.lr == 2.34e-2 and search.edges(best, list(figures), plan) == {"lr": "interior"}

    # The default budget (the grid + 2) runs out while the best still lies at an end: it says so.
    plan, figures = _walk(RunConfig(methods=["lora"], search=["lr"]), "lora", _bowl(2e-2))
    best = search.best_first(figures, "loss")[0]
    assert len(figures) == 5 and best.lr == 1.35e-2 and search.edges(best, list(figures), plan) == {"lr": "end"}

    # A best beyond the limit (100x the default): the search stops there, refines, and says it hit the limit.
    plan, figures = _walk(RunConfig(methods=["lora"], search=["lr"], search_trials=9), "lora", _bowl(1.0))
    best = search.best_first(figures, "loss")[0]
    assert max(t.lr for t in figures) == best.lr == 4.05e-2 and len(figures) == 9
    assert search.edges(best, list(figures), plan) == {"lr": "limit"}

    # Ranks the same way (x2 steps): a best rank of 64 beyond the grid 4, 8, 16 is reached and bracketed.
    config = RunConfig(methods=["lora"], search=["lr", "lora_r"], search_trials=17)
    plan, figures = _walk(config, "lora", _bowl(5e-4, best_rank=64))
    best = search.best_first(figures, "loss")[0]
    assert (best.lr, best.lora_r) == (5e-4, 64) and search.edges(best, list(figures), plan) == {
        "lr": "interior",
        "lora_r": "interior",
    }


def test_a_best_rate_outside_the_starting_grid_is_found_on_a_real_model(tiny_gpt2, articles, tmp_path):
    output = tmp_path / "far"
    start = ("--lr-grid", "1e-6,1e-5")  # far below where LoRA learns anything in one epoch here
    args = _args(tiny_gpt2, articles, output, *start, "--search-trials", "8", "--search-limit", "1e6")
    assert main(args) == 0
    record = json.loads((output / "lora" / "metrics.json").read_text())["search"]
    losses = {t["lr"]: t["epochs"][-1]["val_loss"] for t in record["trials"]}
    rates = sorted(losses)
    assert rates[:2] == [1e-6, 1e-5] and len(rates) > 3  # the grid was extended
    selected = record["lr"]
    assert selected > 1e-5 and record["edges"] == {"lr": "interior"}
    at = rates.index(selected)
    assert losses[rates[at - 1]] > losses[selected] < losses[rates[at + 1]]  # a worse rate tried on either side
    assert losses[selected] < min(losses[1e-6], losses[1e-5])
    assert record["plan"]["start"] == ["lr-1e-06", "lr-1e-05"] and record["plan"]["budget"] == 8
    # What it cost: each trial's wall time (a process of its own) and the trial-epochs, recorded.
    assert all(t["seconds"] > 0 for t in record["trials"]) and record["finish_seconds"] > 0
    assert record["trial_seconds"] == pytest.approx(sum(t["seconds"] for t in record["trials"]))
    assert record["trial_epochs"] == len(rates)
    report = (output / "report.md").read_text()
    assert f"lora: {len(rates)} trials ({len(rates)} trial-epochs" in report and "lr interior" in report
    # Each validation example's part, from which the selection's certainty is computed and reported.
    last = next(t for t in record["trials"] if t["name"] == record["selected"])["epochs"][-1]
    validation = len(last["per_example"]["tokens"])
    assert validation > 1 and sum(last["per_example"]["loss"]) / sum(last["per_example"]["tokens"]) == pytest.approx(
        last["val_loss"]
    )
    assert "Against the runner-up lr-" in report and f"on {validation} validation examples" in report


def test_the_selection_says_when_the_runner_up_cannot_be_told_apart():
    from peftbench.report.selection import certainty, trial_figures

    def trial(name: str, lr: float, losses: list[float]) -> dict:
        per_example = {"loss": losses, "tokens": [10.0] * len(losses)}
        epoch = {
            "epoch": 1,
            "train_loss": 1.0,
            "val_loss": sum(losses) / (10 * len(losses)),
            "per_example": per_example,
        }
        return {"name": name, "lr": lr, "lora_r": None, "epochs": [epoch], "stopped_after": None, "error": None}

    noisy = [20.0, 35.0, 18.0, 40.0, 25.0, 30.0, 22.0, 33.0]
    shifted = [value + (1.0 if i % 2 else -0.8) for i, value in enumerate(noisy)]  # as good, example by example
    far = [value + 8.0 for value in noisy]  # worse on every example
    record = {"select_by": "loss", "selected": "a", "trials": [trial("a", 1e-3, noisy), trial("b", 3e-3, shifted)]}
    close = certainty(record)
    assert close.runner_up.name == "b" and close.examples == 8 and not close.distinguishable
    assert close.difference.low < 0 < close.difference.high
    record["trials"][1] = trial("b", 3e-3, far)
    clear = certainty(record)
    assert clear.distinguishable and clear.difference.high < 0  # the selected one's loss is lower
    figures = {f.name: f for f in trial_figures(record)}
    assert figures["a"].figure.low < figures["a"].value < figures["a"].figure.high
    assert figures["b"].value == pytest.approx(sum(far) / 80)
    # A figure its examples' parts do not give (a record edited by hand): no interval, no comparison claimed.
    record["trials"][1]["epochs"][-1]["val_loss"] = 99.0
    assert {f.name: f.figure for f in trial_figures(record)}["b"] is None and certainty(record) is None
