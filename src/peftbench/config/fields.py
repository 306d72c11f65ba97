"""Each setting's metadata, in one table: its help text, the values it accepts, whether it decides a method's results
(fingerprinted) and whether a model card's command reproduces it. The CLI builds its flags from it, RunConfig checks
ranges with it, the fingerprint and the card read it; RunConfig (run_config.py) holds the types and defaults."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Range:
    """The values a numeric setting accepts: finite, from low (low_open: above it) up to, not including, high."""

    low: float
    high: float = math.inf
    low_open: bool = False

    def holds(self, value: float) -> bool:
        return math.isfinite(value) and (value > self.low if self.low_open else value >= self.low) and value < self.high

    def describe(self, whole: bool) -> str:
        if self.high == math.inf:
            bound = "greater than" if self.low_open else "at least"
            return f"{'a whole number' if whole else 'a finite number'} {bound} {self.low:g}"
        return f"a number in {'(' if self.low_open else '['}{self.low:g}, {self.high:g})"


ABOVE_ZERO = Range(0, low_open=True)


@dataclass(frozen=True)
class Setting:
    """One setting's metadata.

    help: the flag's help; {methods}, {method_lrs}, {metrics} and {trackers} are filled in by the CLI from the
    registries. valid: the range of a numeric setting (checked before anything loads). fingerprinted: whether it
    decides a method's results; the settings that only change where and how a run reports (or where its trials run)
    are not, so that changing them neither reruns nor refuses finished methods. reproduced: whether the command in a
    model card that trains the method again gives it. default_shown: whether --help shows its default (not where the
    default depends on the method or the task). metavar: the flag's value name, where its last word does not say it.
    """

    help: str
    valid: Range | None = None
    fingerprinted: bool = True
    reproduced: bool = True
    default_shown: bool = True
    metavar: str | None = None


# `methods` and `seeds` are not fingerprinted because each method directory is one method at one seed (its seed is in
# the fingerprint); the search's grids and halving because they decide which trials run, not what a trial gives (each
# trial's own lr and rank are in its fingerprint), so that a grid point added later runs alone. max_grad_norm 0 would
# clip every update away; max_target_tokens holds one token and EOS.
SETTINGS: dict[str, Setting] = {
    "model": Setting(
        "hub id (gpt2, t5-small, ...), local directory, or a config.json alone (random weights: speed and memory "
        "only); default: the embedded SmolLM2-135M-Instruct",
        default_shown=False,
    ),
    "dataset": Setting(
        "hub dataset id (cnn_dailymail), a local .jsonl/.json/.csv/.parquet file or a datasets save_to_disk "
        "folder, embedded (the CNN/DM sample, default) or embedded-qa (HotpotQA questions, task qa)",
        default_shown=False,
    ),
    "dataset_config": Setting("hub dataset config, e.g. 3.0.0 for cnn_dailymail"),
    "source_column": Setting(
        "one column as the source (shorthand for --prompt-template '{column}'; the task knows the usual columns "
        "of its datasets)",
    ),
    "target_column": Setting(
        "column holding the reference answer: one text, or a list of acceptable answers (the first is trained on,"
        " metrics take the best)",
    ),
    "prompt_template": Setting(
        "the source as a Python format string over columns, e.g. '{knowledge}\\nQuestion: {question}\\nAnswer:'; "
        "too long a prompt is shortened in its longest columns, never in the template's words",
    ),
    "task": Setting(
        "summarization, qa or classification: sets the prompt template, the target column, --metrics and "
        "--primary-metric unless given (default: the embedded dataset's task, else summarization)",
        default_shown=False,
    ),
    "metrics": Setting(
        "comma list of task metrics: {metrics} (rouge = rouge1,rouge2,rougeL,rougeLsum; default: the task's)",
        default_shown=False,
    ),
    "primary_metric": Setting(
        "the metric the verdict, the report's ranking and the plots use (default: the task's)",
        default_shown=False,
    ),
    "comparator": Setting(
        "the method the verdict asks the cheaper ones to match, declared before the results are seen (default: full "
        "fine-tuning)",
        fingerprinted=False,
        reproduced=False,
        default_shown=False,
        metavar="METHOD",
    ),
    "margin": Setting(
        "how far below the comparator a method may score and still count as good as it, in points out of 100 of "
        "the primary metric (ROUGE 0.01, BLEU 1); the verdict calls a method non-inferior only where its interval "
        "rules out a larger loss",
        valid=Range(0, 100),
        fingerprinted=False,
        reproduced=False,
        metavar="POINTS",
    ),
    "choices": Setting(
        "comma list of the label set, for accuracy and accuracy_ll (e.g. True,False); a target that is a number "
        "indexes it",
    ),
    "choices_column": Setting("column holding each example's own options (a list), for accuracy and accuracy_ll"),
    "train_split": Setting(
        "a dataset's own split to train on (hub datasets, save_to_disk folders), slices as datasets spells them: "
        "train[:2000], train[:10%%]",
    ),
    "validation_split": Setting(
        "a dataset's own split to validate on, e.g. test[:500] where there is no validation split",
    ),
    "test_split": Setting("a dataset's own split to test on"),
    "methods": Setting("comma list from {methods}", fingerprinted=False),
    "epochs": Setting("training epochs", valid=Range(1)),
    "batch_size": Setting(
        "examples per micro-batch across all processes (the global batch, not per device); one optimizer step "
        "takes batch-size x grad-accum examples",
        valid=Range(1),
    ),
    "per_device_batch_size": Setting(
        "examples per micro-batch on each process (device), as HF Trainer's per_device_train_batch_size: "
        "--batch-size becomes this x the number of processes; excludes --batch-size",
        valid=Range(1),
        fingerprinted=False,
    ),
    "grad_accum": Setting("micro-batches accumulated per optimizer step", valid=Range(1)),
    "lr": Setting("learning rate; default per method: {method_lrs}", valid=ABOVE_ZERO, default_shown=False),
    "warmup_ratio": Setting("fraction of optimizer steps with linear warmup", valid=Range(0, 1)),
    "weight_decay": Setting("AdamW weight decay", valid=Range(0)),
    "max_grad_norm": Setting("gradient clipping norm", valid=ABOVE_ZERO),
    "seed": Setting("random seed (initialisation, dropout, data order)", valid=Range(0)),
    "seeds": Setting(
        "comma list of seeds, e.g. 0,1,2: one complete run per seed under OUTPUT/seed-<s>, and a report with "
        "means and 95%% confidence intervals; overrides --seed",
        fingerprinted=False,
        reproduced=False,
    ),
    "train_size": Setting("training examples to use", valid=Range(1)),
    "eval_size": Setting("validation examples to use", valid=Range(1)),
    "test_size": Setting("test examples to use", valid=Range(1)),
    "prompt_format": Setting(
        "how a causal model is prompted: chat (the tokenizer's chat template: the instruction and the article as "
        "the user's turn, the summary as the assistant's), plain (article, then 'TL;DR:'), or auto (chat where "
        "the tokenizer has a template); seq2seq models read the article in their encoder either way",
    ),
    "instruction": Setting(
        "the request put before the source in the chat format (default: the task's)",
        default_shown=False,
    ),
    "max_source_tokens": Setting("articles are truncated to this many tokens", valid=Range(1)),
    "max_target_tokens": Setting("summaries are capped at this many tokens, EOS included", valid=Range(2)),
    "max_new_tokens": Setting("tokens generated per summary at evaluation", valid=Range(1)),
    "num_beams": Setting("beams for generation (1 = greedy)", valid=Range(1)),
    "eval_batch_size": Setting("examples per evaluation/generation batch", valid=Range(1)),
    "eval_every": Setting("validate every N epochs (always after the last one)", valid=Range(1)),
    "eval_generate_size": Setting(
        "validation examples to generate for ROUGE/BLEU each epoch (default: all); loss uses all",
        valid=Range(1),
    ),
    "latency_prompts": Setting(
        "test prompts the latency rounds cycle through (one per round, batch size 1)", valid=Range(1)
    ),
    "latency_rounds": Setting(
        "latency rounds: in each, the base model, the adapter unmerged and merged generate for the same prompt, one "
        "after another; each latency ratio's interval is over the rounds",
        valid=Range(2),
    ),
    "latency_new_tokens": Setting(
        "tokens generated per prompt when timing latency (fixed length; the first times prefill, the rest decode)",
        valid=Range(2),
    ),
    "retention": Setting(
        "the general text forgetting is measured on (the per-token loss before and after training): auto (the "
        "task's: Wikipedia sentences, or news articles for qa, never the task's own data), wikipedia, news, or none",
    ),
    "retention_data": Setting(
        "your own general text for forgetting instead: a .txt file (a text per line) or a .jsonl/.json/.csv/.parquet "
        "file's --retention-column",
        metavar="FILE",
    ),
    "retention_column": Setting("the column of --retention-data holding the texts (default: text, or the only one)"),
    "retention_size": Setting(
        "texts of the retention sample (a fixed pseudo-random choice), and test examples of --retention-task",
        valid=Range(2),
    ),
    "retention_task": Setting(
        "also score another task before and after training, with its own prompt and metric (no training on it): an "
        "embedded dataset, e.g. embedded-qa when training on summaries",
        metavar="DATASET",
    ),
    "gradient_checkpointing": Setting("recompute activations in the backward pass: less memory, more compute"),
    "precision": Setting(
        "auto (bf16 on GPUs that support it, else fp32), fp32, bf16 or fp16; mixed precision is GPU-only",
    ),
    "lora_r": Setting("LoRA rank", valid=Range(1)),
    "lora_alpha": Setting("LoRA alpha (scale = alpha / r)", valid=Range(1)),
    "lora_dropout": Setting("dropout on LoRA's input", valid=Range(0, 1)),
    "lora_targets": Setting(
        "comma list of module names for LoRA and the methods that adapt its targets; all-linear (alias all): "
        "every linear layer but the output head, as peft defines it; or one regular expression matched in full "
        "against each layer's path, as peft's target_modules string; default per model family",
    ),
    "ia3_targets": Setting(
        "comma list of module names for IA3, all-linear, or one regular expression; default per model family",
    ),
    "ia3_feedforward": Setting(
        "comma list of IA3 targets that are feed-forward layers (scale inputs, not outputs), or one regular expression",
    ),
    "loraplus_lr_ratio": Setting(
        "LoRA+: learning rate of the B matrices over that of the A matrices",
        valid=ABOVE_ZERO,
    ),
    "num_virtual_tokens": Setting("virtual tokens of prefix and prompt tuning", valid=Range(1)),
    "quantize": Setting(
        "4bit (NF4, double quantization) or 8bit: load the base model with bitsandbytes and train a LoRA-family "
        "method on it; needs a CUDA GPU and pip install 'peftbench[qlora]'",
    ),
    "method_args": Setting(
        "any field of a method's own peft config: comma list of method.field=value (lora.r=16,vera.r=256,"
        "oft.oft_block_size=16; values as YAML reads them), or in YAML method_args: {lora: {r: 16}}; checked against "
        "peft's config class, and over the shorthand flags (--lora-r, ...). Targets stay --lora-targets and "
        "--ia3-targets, so that methods differ in how they adapt, not where",
        metavar="METHOD.FIELD=VALUE,...",
    ),
    "trust_remote_code": Setting("allow a hub model's own Python code to run (off unless given)"),
    "output": Setting("output directory (default: runs/<timestamp>)", fingerprinted=False, reproduced=False),
    "quiet": Setting("print nothing but errors", fingerprinted=False, reproduced=False),
    "in_process": Setting(
        "run all methods in this process (debugging); by default each method gets its own process so that peak "
        "memory is measured per method",
        fingerprinted=False,
        reproduced=False,
    ),
    "force": Setting(
        "rerun methods already finished in --output, and run there even if it holds another configuration's "
        "results (by default the same command resumes: finished methods are skipped, interrupted ones resume)",
        fingerprinted=False,
        reproduced=False,
    ),
    "allow_other_files": Setting(
        "write into an --output that holds files peftbench did not write (by default refused), beside them: "
        "peftbench never replaces or deletes a file it did not write, --force included",
        fingerprinted=False,
        reproduced=False,
    ),
    "dry_run": Setting(
        "check everything, print the resolved config, trainable parameters per method, token counts and an "
        "estimated run time, then exit without training",
        fingerprinted=False,
        reproduced=False,
    ),
    "allow_pickle": Setting(
        "load models whose weights exist only as pickle files (pytorch_model.bin); loading a pickle can run code,"
        " so only for files you trust",
        fingerprinted=False,
    ),
    "report_to": Setting(
        "comma list of experiment trackers: {trackers} (optional extras); all: every installed one; none (the "
        "default): results only in --output",
        fingerprinted=False,
        reproduced=False,
    ),
    "executor": Setting(
        "where the units of work (each method, or its whole --search, at each seed) run: local (one after "
        "another, each in its own process) or ray (all at once as tasks on a Ray cluster, a GPU each where it has"
        " GPUs; pip install 'peftbench[ray]')",
        fingerprinted=False,
    ),
    "ray_address": Setting(
        "with --executor ray: auto (a running Ray cluster, else a local one started for the run), local (always a"
        " new local one) or HOST:PORT of a Ray head",
        fingerprinted=False,
    ),
    "gpus_per_trial": Setting(
        "with --executor ray: GPUs each trial reserves (default: 1 where the cluster has GPUs, else 0)",
        valid=Range(0),
        fingerprinted=False,
        metavar="GPUS",
    ),
    "cpus_per_trial": Setting(
        "with --executor ray: CPUs each trial reserves (its torch threads)",
        valid=ABOVE_ZERO,
        fingerprinted=False,
        metavar="CPUS",
    ),
    "ray_scratch": Setting(
        "with --executor ray: where a worker writes its trial before shipping the files back (default: its node's"
        " temp folder); a folder on storage shared by every node lets a retried trial resume on any node",
        fingerprinted=False,
    ),
    "search": Setting(
        "tune each method before comparing: lr, or lr,lora_r (the rank, for methods that have one); every grid "
        "point is a trial trained and validated in OUTPUT/<method>/trials/, and the one best on validation alone "
        "is tested and becomes the method's result",
    ),
    "lr_grid": Setting(
        "comma list of learning rates for every method's search (YAML: one list per method); default: the "
        "method's learning rate x 1/3, 1, 3",
        fingerprinted=False,
    ),
    "rank_grid": Setting(
        "comma list of ranks (lora_r) for methods that have one (YAML: one list per method); default: --lora-r x "
        "1/2, 1, 2",
        fingerprinted=False,
    ),
    "select_by": Setting(
        "what selects a search's trial: loss (validation loss, lower is better) or a metric of --metrics on "
        "validation (higher is better)",
    ),
    "search_halving": Setting(
        "successive halving (on; --no-search-halving trains every trial every epoch): every trial trains one epoch, "
        "where the search also shapes its grid, then a third of the trials (at least two) go on, epoch by epoch",
        fingerprinted=False,
    ),
    "search_trials": Setting(
        "trials each method's search gets, the same for every method (so that none is favoured by a larger "
        "search): the starting grid, then points past its best while that lies at an end, then between the best "
        "and its better neighbour; default: the largest starting grid + 2",
        valid=Range(1),
        fingerprinted=False,
        default_shown=False,
        metavar="N",
    ),
    "search_limit": Setting(
        "how far a search may extend a grid: a factor of the method's own value either way (its learning rate or "
        "--lr; --lora-r for ranks); a selected value at that limit is reported as such",
        valid=Range(1, low_open=True),
        fingerprinted=False,
        metavar="FACTOR",
    ),
}
RANGES = {name: setting.valid for name, setting in SETTINGS.items() if setting.valid is not None}
NOT_FINGERPRINTED = tuple(name for name, setting in SETTINGS.items() if not setting.fingerprinted)
NOT_REPRODUCED = tuple(name for name, setting in SETTINGS.items() if not setting.reproduced)
