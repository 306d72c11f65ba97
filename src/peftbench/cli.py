"""Command line: `peftbench run` with flags (or the same keys in a YAML file given with --config), `peftbench report`
to (re)build the comparison report from output directories, and `peftbench methods` to print the registry."""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

from peftbench.config.run_config import ALIASES, FIELDS, TRACKERS, RunConfig, build_config, load_yaml
from peftbench.errors import ConfigError, UserError
from peftbench.methods.registry import METHODS
from peftbench.pipeline import lifecycle
from peftbench.task.metrics import METRICS

DEFAULTS = RunConfig()
# Defaults that depend on other settings (the method, the task): their help says so instead of showing one value.
TASK_DEPENDENT = ("lr", "model", "dataset", "task", "metrics", "primary_metric", "instruction")
HELP = {
    "model": "hub id (gpt2, t5-small, ...), local directory, or a config.json alone (random weights: speed and memory "
    "only); default: the embedded SmolLM2-135M-Instruct",
    "dataset": "hub dataset id (cnn_dailymail), a local .jsonl/.json/.csv/.parquet file or a datasets save_to_disk "
    "folder, embedded (the CNN/DM sample, default) or embedded-qa (HotpotQA questions, task qa)",
    "dataset_config": "hub dataset config, e.g. 3.0.0 for cnn_dailymail",
    "source_column": "one column as the source (shorthand for --prompt-template '{column}'; the task knows the usual "
    "columns of its datasets)",
    "target_column": "column holding the reference answer: one text, or a list of acceptable answers (the first is "
    "trained on, metrics take the best)",
    "prompt_template": "the source as a Python format string over columns, e.g. '{knowledge}\\nQuestion: "
    "{question}\\nAnswer:'; too long a prompt is shortened in its longest columns, never in the template's words",
    "task": "summarization, qa or classification: sets the prompt template, the target column, --metrics and "
    "--primary-metric unless given (default: the embedded dataset's task, else summarization)",
    "metrics": f"comma list of task metrics: {', '.join(['rouge', *METRICS])} (rouge = rouge1,rouge2,rougeL; "
    "default: the task's)",
    "primary_metric": "the metric the verdict, the report's ranking and the plots use (default: the task's)",
    "choices": "comma list of the label set, for accuracy and accuracy_ll (e.g. True,False); a target that is a "
    "number indexes it",
    "choices_column": "column holding each example's own options (a list), for accuracy and accuracy_ll",
    "train_split": "a dataset's own split to train on (hub datasets, save_to_disk folders), slices as datasets "
    "spells them: train[:2000], train[:10%%]",
    "validation_split": "a dataset's own split to validate on, e.g. test[:500] where there is no validation split",
    "test_split": "a dataset's own split to test on",
    "methods": f"comma list from {','.join(METHODS)}",
    "epochs": "training epochs",
    "batch_size": "examples per micro-batch across all processes (the global batch, not per device); one optimizer "
    "step takes batch-size x grad-accum examples",
    "grad_accum": "micro-batches accumulated per optimizer step",
    "lr": "learning rate; default per method: " + ", ".join(f"{m.name} {m.default_lr:g}" for m in METHODS.values()),
    "warmup_ratio": "fraction of optimizer steps with linear warmup",
    "weight_decay": "AdamW weight decay",
    "max_grad_norm": "gradient clipping norm",
    "seed": "random seed (initialisation, dropout, data order)",
    "seeds": "comma list of seeds, e.g. 0,1,2: one complete run per seed under OUTPUT/seed-<s>, and a report with "
    "means and 95%% confidence intervals; overrides --seed",
    "train_size": "training examples to use",
    "eval_size": "validation examples to use",
    "test_size": "test examples to use",
    "prompt_format": "how a causal model is prompted: chat (the tokenizer's chat template: the instruction and the "
    "article as the user's turn, the summary as the assistant's), plain (article, then 'TL;DR:'), or auto (chat where "
    "the tokenizer has a template); seq2seq models read the article in their encoder either way",
    "instruction": "the request put before the source in the chat format (default: the task's)",
    "max_source_tokens": "articles are truncated to this many tokens",
    "max_target_tokens": "summaries are capped at this many tokens, EOS included",
    "max_new_tokens": "tokens generated per summary at evaluation",
    "num_beams": "beams for generation (1 = greedy)",
    "eval_batch_size": "examples per evaluation/generation batch",
    "eval_every": "validate every N epochs (always after the last one)",
    "eval_generate_size": "validation examples to generate for ROUGE/BLEU each epoch (default: all); loss uses all",
    "latency_prompts": "test prompts timed one at a time (batch size 1) for latency_ms",
    "latency_new_tokens": "tokens generated per prompt when timing latency (fixed length)",
    "gradient_checkpointing": "recompute activations in the backward pass: less memory, more compute",
    "precision": "auto (bf16 on GPUs that support it, else fp32), fp32, bf16 or fp16; mixed precision is GPU-only",
    "lora_r": "LoRA rank",
    "lora_alpha": "LoRA alpha (scale = alpha / r)",
    "lora_dropout": "dropout on LoRA's input",
    "lora_targets": "comma list of module names for LoRA and the methods that adapt its targets; all-linear (alias "
    "all): every linear layer but the output head, as peft defines it; or one regular expression matched in full "
    "against each layer's path, as peft's target_modules string; default per model family",
    "ia3_targets": "comma list of module names for IA3, all-linear, or one regular expression; default per model "
    "family",
    "ia3_feedforward": "comma list of IA3 targets that are feed-forward layers (scale inputs, not outputs), or one "
    "regular expression",
    "loraplus_lr_ratio": "LoRA+: learning rate of the B matrices over that of the A matrices",
    "num_virtual_tokens": "virtual tokens of prefix and prompt tuning",
    "quantize": "4bit (NF4, double quantization) or 8bit: load the base model with bitsandbytes and train a "
    "LoRA-family method on it; needs a CUDA GPU and pip install 'peftbench[qlora]'",
    "trust_remote_code": "allow a hub model's own Python code to run (off unless given)",
    "output": "output directory (default: runs/<timestamp>)",
    "quiet": "print nothing but errors",
    "in_process": "run all methods in this process (debugging); by default each method gets its own process so "
    "that peak memory is measured per method",
    "force": "rerun methods already finished in --output, and run there even if it holds another configuration's "
    "results (by default the same command resumes: finished methods are skipped, interrupted ones resume)",
    "dry_run": "check everything, print the resolved config, trainable parameters per method, token counts and an "
    "estimated run time, then exit without training",
    "allow_pickle": "load models whose weights exist only as pickle files (pytorch_model.bin); loading a pickle "
    "can run code, so only for files you trust",
    "report_to": f"comma list of experiment trackers: {', '.join(TRACKERS)} (optional extras); all: every "
    "installed one; none (the default): results only in --output",
    "per_device_batch_size": "examples per micro-batch on each process (device), as HF Trainer's "
    "per_device_train_batch_size: --batch-size becomes this x the number of processes; excludes --batch-size",
    "executor": "where the units of work (each method, or its whole --search, at each seed) run: local (one after "
    "another, each in its own process) or ray (all at once as tasks on a Ray cluster, a GPU each where it has GPUs; "
    "pip install 'peftbench[ray]')",
    "ray_address": "with --executor ray: auto (a running Ray cluster, else a local one started for the run), local "
    "(always a new local one) or HOST:PORT of a Ray head",
    "gpus_per_trial": "with --executor ray: GPUs each trial reserves (default: 1 where the cluster has GPUs, else 0)",
    "cpus_per_trial": "with --executor ray: CPUs each trial reserves (its torch threads)",
    "ray_scratch": "with --executor ray: where a worker writes its trial before shipping the files back (default: "
    "its node's temp folder); a folder on storage shared by every node lets a retried trial resume on any node",
    "search": "tune each method before comparing: lr, or lr,lora_r (the rank, for methods that have one); every grid "
    "point is a trial trained and validated in OUTPUT/<method>/trials/, and the one best on validation alone is "
    "tested and becomes the method's result",
    "lr_grid": "comma list of learning rates for every method's search (YAML: one list per method); default: the "
    "method's learning rate x 1/3, 1, 3",
    "rank_grid": "comma list of ranks (lora_r) for methods that have one (YAML: one list per method); default: "
    "--lora-r x 1/2, 1, 2",
    "select_by": "what selects a search's trial: loss (validation loss, lower is better) or a metric of --metrics "
    "on validation (higher is better)",
    "search_halving": "successive halving: every trial trains one epoch, then only the better half goes on, epoch "
    "by epoch",
}
SPELLINGS: dict[str, list[str]] = {}  # field -> its aliases (config.ALIASES)
for _alias, _name in ALIASES.items():
    SPELLINGS.setdefault(_name, []).append(_alias)


def option_strings(name: str) -> list[str]:
    """A field's flag, then the same with underscores, then its aliases spelt both ways."""
    strings = []
    for key in [name, *SPELLINGS.get(name, [])]:
        strings += ["--" + key.replace("_", "-"), "--" + key]
    return list(dict.fromkeys(strings))


class _Given(argparse.Action):
    """Store a flag's value, and record it under the spelling used: config.build_config checks that two spellings of
    one setting (an alias and its flag) agree. The same spelling twice: the last one counts, as usual."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values if self.nargs != 0 else True)
        given = dict(getattr(namespace, "given", None) or {})
        given[option_string] = values if self.nargs != 0 else True
        namespace.given = given


class _Formatter(argparse.HelpFormatter):
    """The metavar once after all of an option's spellings (--lr, --learning-rate, --learning_rate LR), as Python
    3.13 prints it, instead of after each spelling."""

    def _format_action_invocation(self, action):
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        metavar = self._format_args(action, self._get_default_metavar_for_optional(action))
        return ", ".join(action.option_strings) + " " + metavar


METAVARS = {"gpus_per_trial": "GPUS", "cpus_per_trial": "CPUS"}  # where the flag's last word does not name its value


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help="YAML file with the same keys as these flags; flags override it"
    )
    for name in FIELDS:
        flags = option_strings(name)
        default = getattr(DEFAULTS, name)
        if isinstance(default, bool):
            parser.add_argument(*flags, dest=name, action=_Given, nargs=0, default=None, help=HELP[name])
            continue
        shown = ",".join(default) if isinstance(default, list) else default
        suffix = f" (default: {shown})" if default is not None and name not in TASK_DEPENDENT else ""
        metavar = METAVARS.get(name, name.split("_")[-1].upper())
        parser.add_argument(*flags, dest=name, action=_Given, default=None, metavar=metavar, help=HELP[name] + suffix)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peftbench",
        description=f"Compare full fine-tuning and {len(METHODS) - 1} PEFT methods (LoRA and its variants, LoHa, LoKr, "
        "VeRA, OFT, IA3, prefix and prompt tuning) on the same model, data and budget.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run",
        help="fine-tune with each method, evaluate, and write a comparison",
        description="Fine-tune one model with each method on the same data; write metrics, "
        "predictions, adapters with their model cards, per-step logs, curves, summary.md and the report (report.md, "
        "report.html) under --output. Flags also take the names HF Trainer, peft and LLaMA-Factory use "
        "(--learning_rate, --num_train_epochs, --output_dir, --lora_target, ...), and every flag its underscore "
        "spelling.",
        formatter_class=_Formatter,
        allow_abbrev=False,  # a misspelt flag gets a suggestion, never a silent guess
    )
    _add_run_flags(run)
    report = commands.add_parser(
        "report",
        help="write report.md and report.html comparing the methods of one or more runs",
        description="Build the comparison report (tables, per-epoch and Pareto plots, examples) from the output "
        "directories of peftbench run; several directories (e.g. two models) give one report with a section each.",
    )
    report.add_argument("outputs", nargs="+", metavar="OUTPUT", help="output directory of peftbench run")
    report.add_argument("--output", metavar="DIR", help="where to write the report (default: the first OUTPUT)")
    report.add_argument(
        "--format",
        default="md,html",
        metavar="FORMATS",
        help=f"comma list of {', '.join(REPORT_FORMATS)}: md and html write report.md and "
        "report.html; csv and json write results.csv and results.jsonl, one row per model x method "
        "x seed (default: md,html)",
    )
    methods = commands.add_parser(
        "methods",
        help="list the fine-tuning methods; with --model, each one's trainable parameters on that model",
        description="List every method: whether it merges into the weights, its default learning rate and what "
        "it does. With --model, also the trainable parameters each would have on that model, or why it cannot apply.",
    )
    methods.add_argument("--model", metavar="MODEL", help=HELP["model"].split(";")[0])
    methods.add_argument("--trust-remote-code", action="store_true", help=HELP["trust_remote_code"])
    return parser


REPORT_FORMATS = ("md", "html", "csv", "json")


def _report(args: argparse.Namespace) -> None:
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    unknown = [f for f in formats if f not in REPORT_FORMATS]
    if unknown or not formats:
        raise ConfigError(f"--format {args.format!r}: choose a comma list of {', '.join(REPORT_FORMATS)}")
    from peftbench.report.export import write_exports  # matplotlib and the statistics only when reporting
    from peftbench.report.write import analysed, write_report

    outputs = [Path(p) for p in args.outputs]
    destination = Path(args.output) if args.output else outputs[0]
    results = analysed(outputs)
    written = []
    if {"md", "html"} & set(formats):
        written += [p for p in write_report(results, destination) if p.suffix.lstrip(".") in formats]
    exports = tuple(kind for kind in ("csv", "json") if kind in formats)
    if exports:
        written += write_exports(results.sections, destination, exports)
    for path in written:
        print(path)


def _table(rows: list[list[str]]) -> str:
    """Left-aligned columns; the last column is left as long as it is."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join([c.ljust(w) for c, w in zip(row, widths, strict=False)] + [row[-1]]) for row in rows)


def describe_methods(loaded=None) -> str:
    """The registry as a table; given a loaded model, with each method's trainable parameters on it (or why it
    cannot apply), at the default settings."""
    from peftbench.methods.apply import count_parameters, trainable_counts
    from peftbench.methods.settings import MethodSettings

    counts = trainable_counts(loaded, MethodSettings.from_config(RunConfig())) if loaded is not None else {}
    header = ["method", "mergeable", "default lr"] + (["trainable", "%"] if loaded else []) + ["description"]
    rows = [header]
    for method in METHODS.values():
        row = [method.name, "yes" if method.mergeable else "no", f"{method.default_lr:g}"]
        description = method.description
        if loaded is not None:
            count = counts[method.name]
            if isinstance(count, str):
                row += ["-", "-"]
                description = count
            else:
                row += [f"{count[0]:,}", f"{100 * count[0] / count[1]:.3f}%"]
        rows.append(row + [description])
    lines = _table(rows)
    if loaded is not None:
        _, total = count_parameters(loaded.model)
        lines = f"On {loaded.name} ({loaded.family.name}, {total:,} parameters):\n" + lines
    return lines


def _methods(args: argparse.Namespace) -> None:
    loaded = None
    if args.model:
        from peftbench.model.load import load_model
        from peftbench.pipeline.console import quiet_libraries

        quiet_libraries()
        loaded = load_model(args.model, args.trust_remote_code)
    print(describe_methods(loaded))


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse flags; an unknown flag is a ConfigError naming the nearest valid one (argparse 3.11 suggests none)."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        flags = [f for action in commands.choices[args.command]._actions for f in action.option_strings]
        word = next((u.split("=")[0] for u in unknown if u.startswith("-")), unknown[0])
        close = difflib.get_close_matches(word, flags, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else f"; see peftbench {args.command} --help"
        raise ConfigError(f"unknown flag {word}{hint}" if word.startswith("-") else f"unexpected argument {word!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    lifecycle.die_with_launcher()  # under torchrun or accelerate launch: no process outlives the launcher
    try:
        with lifecycle.sigterm_interrupts():
            args = _parse(build_parser(), argv)
            if args.command == "run":
                from peftbench.parallel import processes
                from peftbench.pipeline.compare import run
                from peftbench.pipeline.console import quiet_libraries  # heavy imports only when running

                quiet_libraries()
                flags = getattr(args, "given", None) or {}
                run(build_config(load_yaml(args.config) if args.config else {}, flags, processes()))
            elif args.command == "report":
                _report(args)
            elif args.command == "methods":
                _methods(args)
    except UserError as exc:
        print(f"peftbench: error: {exc}", file=sys.stderr)
        return exc.exit_code  # errors.MethodsFailed: 1 when a method failed for a bug
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (lifecycle.Terminated)
        what = "terminated (SIGTERM)" if isinstance(exc, lifecycle.Terminated) else "interrupted"
        print(f"peftbench: {what}; finished methods' results are kept in the output directory", file=sys.stderr)
        return getattr(exc, "exit_code", 130)
    return 0
