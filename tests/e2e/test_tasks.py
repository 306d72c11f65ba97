"""The user's own task: prompt templates over several columns, several references, task metrics and presets, choice
scoring by likelihood, data in parquet files and datasets folders with their own splits, and bad input refused
before any model loads."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from peftbench.cli import main
from peftbench.config.run_config import RunConfig
from peftbench.data.splits import Example, load_splits
from peftbench.model.layout import PromptOptions, TokenLimits
from peftbench.model.load import load_model
from peftbench.training.evaluate import EvalOptions, Evaluator
from tests.helpers import tiny_run_args

QUESTIONS = [
    ("Paris is the capital of France.", "What is the capital of France?", ["Paris", "paris, France"]),
    ("The Nile flows north into the Mediterranean Sea.", "Where does the Nile flow?", ["into the Mediterranean"]),
    ("Water boils at 100 degrees Celsius at sea level.", "At what temperature does water boil?", ["100 degrees"]),
    ("Mount Everest is the highest mountain on Earth.", "Which mountain is the highest?", ["Mount Everest"]),
]


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory):
    """40 question-answer rows with a context, the answer as a list of acceptable answers."""
    path = tmp_path_factory.mktemp("qa") / "qa.jsonl"
    rows = [
        {"id": f"q{i}-{k}", "context": f"{context} (Fact {i}.)", "question": question, "answers": answers}
        for i in range(50)
        for k, (context, question, answers) in enumerate(QUESTIONS)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def labels_file(tmp_path_factory):
    """Sentences labelled True or False (as label indices into --choices False,True)."""
    path = tmp_path_factory.mktemp("cls") / "labels.jsonl"
    rows = [
        {"text": f"Statement number {i} is {'accurate' if i % 2 else 'wrong'}.", "label": i % 2} for i in range(200)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _metrics(output, method):
    return json.loads((output / method / "metrics.json").read_text())


def test_template_fills_columns_and_cuts_the_longest(tiny_gpt2, qa_file):
    config = RunConfig(dataset=str(qa_file), task="qa", train_size=4, eval_size=1, test_size=1)
    example = load_splits(config).train[0]
    assert example.source.startswith(example.segments[0][0]) and "\nQuestion: " in example.source
    assert example.source.endswith("\nAnswer:") and example.references == [example.target, *example.references[1:]]
    loaded = load_model(str(tiny_gpt2), prompt=PromptOptions("plain", task="qa", cue=""))
    long = Example(
        "x",
        "",
        "Paris",
        segments=[("word " * 300, True), ("\nQuestion: ", False), ("What is the capital?", True), ("\nAnswer:", False)],
    )
    (item,) = loaded.layout.encode([long], TokenLimits(source=40, target=8))
    prompt = loaded.tokenizer.decode(item.prompt)
    assert len(item.prompt) <= 40 and prompt.endswith("\nQuestion: What is the capital?\nAnswer:")  # words kept
    assert prompt.startswith("word word")  # the long column was cut, at its end


def test_qa_preset_scores_exact_match_and_f1_against_every_reference(tiny_gpt2, qa_file, tmp_path):
    output = tmp_path / "qa"
    args = tiny_run_args(
        tiny_gpt2, qa_file, output, "--task", "qa", "--methods", "lora", "--epochs", "1", "--in-process"
    )
    assert main(args) == 0
    metrics = _metrics(output, "lora")
    assert metrics["config"]["metrics"] == ["exact_match", "f1"] and metrics["config"]["primary_metric"] == "f1"
    assert set(metrics["test"]) == {"loss", "exact_match", "f1"} and set(metrics["epochs"][0]) >= {"f1"}
    rows = [json.loads(line) for line in (output / "lora" / "predictions.jsonl").read_text().splitlines()]
    several = [row for row in rows if len(row.get("references", [])) > 1]
    assert all({"exact_match", "f1"} <= set(row) for row in rows)
    assert all(row["references"][0] == row["reference"] for row in several)
    summary = (output / "summary.md").read_text()
    assert "test exact match" in summary and "test F1" in summary and "ROUGE" not in summary
    assert not (output / "lead-3").exists() and not (output / "majority-class").exists()  # qa has no trivial one


def test_accuracy_by_generation_and_by_likelihood(tiny_gpt2, labels_file, tmp_path):
    config = RunConfig(
        dataset=str(labels_file),
        task="classification",
        choices=["False", "True"],
        train_size=4,
        eval_size=1,
        test_size=12,
        max_new_tokens=3,
    )
    splits = load_splits(config)
    assert {ex.target for ex in splits.test} <= {"False", "True"} and splits.test[0].choices == ["False", "True"]
    loaded = load_model(str(tiny_gpt2), prompt=PromptOptions.from_config(config))
    items = loaded.layout.encode(splits.test, TokenLimits(48, 8))
    evaluator = Evaluator(loaded.layout, EvalOptions.from_config(config), torch.device("cpu"))
    scores, generation = evaluator.evaluate(loaded.model, items, splits.test)
    # The likelihood choice by brute force: each choice's summed log-probability after the prompt, one at a time;
    # length-normalised as lm-evaluation-harness's acc_norm: over the choice's length in characters.
    chosen = zip(splits.test, generation.likely_choices, generation.likely_choices_norm, strict=True)
    for item, (ex, plain, normed) in zip(items, chosen, strict=True):
        losses = []
        for choice_item in loaded.layout.choice_items(item, ex.choices):
            with torch.no_grad():
                ids = torch.tensor([choice_item.prompt + choice_item.target])
                logits = loaded.model(ids).logits[0, len(choice_item.prompt) - 1 : -1]
                losses.append(-torch.log_softmax(logits, -1)[range(len(choice_item.target)), choice_item.target].sum())
        assert plain == ex.choices[int(torch.stack(losses).argmin())]
        lengths = torch.tensor([float(len(choice)) for choice in ex.choices])
        assert normed == ex.choices[int((-torch.stack(losses) / lengths).argmax())]
    accuracy, likely = generation.per_example["accuracy"], generation.per_example["accuracy_ll"]
    assert scores.metrics["accuracy"] == pytest.approx(sum(accuracy) / 12)
    assert scores.metrics["accuracy_ll"] == pytest.approx(sum(likely) / 12)
    assert scores.metrics["accuracy_ll_norm"] == pytest.approx(sum(generation.per_example["accuracy_ll_norm"]) / 12)
    # "False" is one character longer than "True": where the two rules choose differently, the lengths decided.
    assert generation.likely_choices != generation.likely_choices_norm
    # A random tiny model generates no choice at all, while its likelihood still picks one: the two disagree.
    assert any(a == 0 and b == 1 for a, b in zip(accuracy, likely, strict=True))


def test_classification_run_end_to_end(tiny_gpt2, labels_file, tmp_path):
    output = tmp_path / "cls"
    args = tiny_run_args(
        tiny_gpt2,
        labels_file,
        output,
        "--task",
        "classification",
        "--choices",
        "False,True",
        "--methods",
        "ia3",
        "--epochs",
        "1",
        "--in-process",
    )
    assert main(args) == 0
    metrics = _metrics(output, "ia3")
    assert set(metrics["test"]) == {"loss", "accuracy", "accuracy_ll", "accuracy_ll_norm"}
    rows = [json.loads(line) for line in (output / "ia3" / "predictions.jsonl").read_text().splitlines()]
    assert all(row["likely_choice"] in ("False", "True") and row["choices"] == ["False", "True"] for row in rows)
    assert all(row["likely_choice_norm"] in ("False", "True") for row in rows)
    majority = _metrics(output, "majority-class")  # the trivial reference: the training split's commonest label
    predicted = {json.loads(line)["prediction"] for line in (output / "majority-class" / "predictions.jsonl").open()}
    assert len(predicted) == 1 and predicted <= {"False", "True"}
    assert set(majority["test"]) == {"loss", "accuracy", "accuracy_ll", "accuracy_ll_norm"}
    assert "Answer: " in (output / "summary.md").read_text()


def test_parquet_and_datasets_folders_with_their_own_splits(qa_file, tmp_path, capsys):
    import datasets

    rows = [json.loads(line) for line in qa_file.read_text().splitlines()]
    parquet = tmp_path / "qa.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(parquet))
    splits = load_splits(RunConfig(dataset=str(parquet), task="qa", train_size=4, eval_size=1, test_size=1))
    assert "parquet file" in splits.description and splits.train[0].references
    folder = tmp_path / "folder"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows[:150]), "test": datasets.Dataset.from_list(rows[150:])}
    ).save_to_disk(str(folder))
    config = RunConfig(
        dataset=str(folder),
        task="qa",
        validation_split="test[:5]",
        test_split="test[5:]",
        train_size=150,
        eval_size=5,
        test_size=5,
    )
    splits = load_splits(config)
    assert [len(splits.train), len(splits.validation), len(splits.test)] == [150, 5, 5]
    assert {ex.id for ex in splits.validation}.isdisjoint({ex.id for ex in splits.test})
    assert "its own splits" in splits.description
    args = ["run", "--dataset", str(folder), "--task", "qa", "--dry-run", "--model", "embedded"]
    assert main([*args, "--validation-split", "dev"]) == 2  # no such split: the ones there are, listed
    assert "has no split 'dev'; its splits are: train, test" in capsys.readouterr().err
    assert main(["run", "--dataset", str(qa_file), "--task", "qa", "--test-split", "test[:5]", "--dry-run"]) == 2
    assert "one table" in capsys.readouterr().err


def test_embedded_qa_dataset_uses_the_qa_preset():
    config = RunConfig(dataset="embedded-qa", train_size=8, eval_size=2, test_size=2)
    assert config.task == "qa" and config.primary_metric == "f1"
    splits = load_splits(config)
    example = splits.train[0]
    assert "\nQuestion: " in example.source and example.source.endswith("\nAnswer:") and example.target
    assert "HotpotQA" in splits.description


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--prompt-template", "{knowledge}\nQ: {question}"), "'knowledge' is not a column"),
        (("--prompt-template", "  "), "--prompt-template is empty"),
        (("--prompt-template", "{0}"), "is not a column name"),
        (("--task", "classification", "--choices", "yes"), "at least two different choices"),
        (("--metrics", "rouge,meteor"), "meteor: no such metric; choose from rouge, rouge1"),
        (("--metrics", "bleu", "--primary-metric", "rougeL"), "--primary-metric rougeL is not among --metrics bleu"),
        (("--task", "classification"), "give --choices"),
        (("--task", "translation"), "--task must be one of summarization, qa, classification"),
    ],
)
def test_bad_task_settings_are_refused_before_any_model_loads(extra, message, qa_file, tmp_path, capsys):
    args = [
        "run",
        "--model",
        str(tmp_path / "no-model"),
        "--dataset",
        str(qa_file),
        "--task",
        "qa",
        "--output",
        str(tmp_path / "out"),
        *extra,
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "cannot load model" not in err


def test_an_empty_answer_list_names_its_row(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    rows = [{"id": f"q{i}", "question": f"Question {i}?", "answers": ["A"] if i != 7 else []} for i in range(20)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert (
        main(
            [
                "run",
                "--dataset",
                str(path),
                "--task",
                "qa",
                "--model",
                str(tmp_path / "none"),
                "--output",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "row q7 (number 8) has an empty list of answers in column 'answers'" in capsys.readouterr().err


def _word_line_model(path, tokenizer, word: str):
    """Tiny GPT-2 rewired to write `word`, a line break, `word`, ...: its blocks add nothing to the residual stream,
    and each position's huge position embedding points at the token that position predicts (word at even positions,
    "\\n" at odd ones), so the prediction starts with a word and carries on over several lines."""
    model = load_model(str(path)).model
    (word_id,), (newline_id,) = tokenizer(word).input_ids, tokenizer("\n").input_ids
    with torch.no_grad():
        for block in model.transformer.h:
            for projection in (block.attn.c_proj, block.mlp.c_proj):
                projection.weight.zero_()
                projection.bias.zero_()
        embeddings, positions = model.transformer.wte.weight, model.transformer.wpe.weight
        for token, axis in ((word_id, 0), (newline_id, 2)):
            embeddings[token] = 0.0
            embeddings[token, axis], embeddings[token, axis + 1] = 5.0, -5.0  # zero mean: layer norm keeps it
        positions[0::2] = 1000 * embeddings[word_id]
        positions[1::2] = 1000 * embeddings[newline_id]
    return model


def test_one_line_answers_stop_and_are_scored_at_their_first_line(tiny_gpt2, qa_file):
    config = RunConfig(dataset=str(qa_file), task="qa", train_size=4, eval_size=1, test_size=4, max_new_tokens=6)
    splits = load_splits(config)
    loaded = load_model(str(tiny_gpt2), prompt=PromptOptions.from_config(config))
    model = _word_line_model(tiny_gpt2, loaded.tokenizer, " Paris")
    items = loaded.layout.encode(splits.test, TokenLimits(48, 8))
    options = EvalOptions.from_config(config)
    assert options.one_line
    whole, _ = Evaluator(loaded.layout, dataclasses.replace(options, one_line=False), torch.device("cpu")).generate(
        model, items
    )
    assert all(prediction.count("\n") >= 2 for prediction in whole.predictions)  # several lines generated
    scores, generation = Evaluator(loaded.layout, options, torch.device("cpu")).evaluate(model, items, splits.test)
    assert generation.predictions == ["Paris"] * 4  # the first line only, stored and scored
    # Generation stopped at the line break that ends the answer: at most a leading "\n", " Paris" and that "\n".
    assert generation.new_tokens <= 3 * 4 < whole.new_tokens == 6 * 4
    paris = [1.0 if "Paris" in ex.references else 0.0 for ex in splits.test]
    assert generation.per_example["exact_match"] == paris and scores.metrics["exact_match"] == sum(paris) / 4
