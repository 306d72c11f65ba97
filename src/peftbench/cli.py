"""Command line: `peftbench run` with flags (or the same keys in a YAML file given with --config), `peftbench report`
to (re)build the comparison report from output directories, and `peftbench methods` to print the registry."""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

from peftbench.config.fields import SETTINGS
from peftbench.config.run_config import ALIASES, FIELDS, TRACKERS, RunConfig, build_config, load_yaml
from peftbench.errors import ConfigError, UserError
from peftbench.methods.registry import METHODS
from peftbench.pipeline import lifecycle
from peftbench.store import rundir
from peftbench.task.metrics import METRICS

DEFAULTS = RunConfig()
# What a setting's help names from the registries (config/fields.py knows neither methods nor metrics).
HELP_VALUES = {
    "{methods}": ",".join(METHODS),
    "{method_lrs}": ", ".join(f"{m.name} {m.default_lr:g}" for m in METHODS.values()),
    "{metrics}": ", ".join(["rouge", *METRICS]),
    "{trackers}": ", ".join(TRACKERS),
}


def help_of(name: str) -> str:
    """A setting's help text (config/fields.py), with the registries' names filled in."""
    text = SETTINGS[name].help
    for placeholder, value in HELP_VALUES.items():
        text = text.replace(placeholder, value)
    return text


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
        value = values if self.nargs != 0 else self.const  # a switch: True, or False for --no-<flag>
        setattr(namespace, self.dest, value)
        given = dict(getattr(namespace, "given", None) or {})
        given[option_string.replace("--no-", "--", 1) if value is False else option_string] = value
        namespace.given = given


class _Formatter(argparse.HelpFormatter):
    """The metavar once after all of an option's spellings (--lr, --learning-rate, --learning_rate LR), as Python
    3.13 prints it, instead of after each spelling."""

    def _format_action_invocation(self, action):
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        metavar = self._format_args(action, self._get_default_metavar_for_optional(action))
        return ", ".join(action.option_strings) + " " + metavar


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help="YAML file with the same keys as these flags; flags override it"
    )
    for name in FIELDS:
        flags = option_strings(name)
        default = getattr(DEFAULTS, name)
        if isinstance(default, bool):
            parser.add_argument(*flags, dest=name, action=_Given, nargs=0, const=True, default=None, help=help_of(name))
            if default:  # a setting on by default is turned off with --no-<flag>
                negative = [flag.replace("--", "--no-", 1) for flag in flags]
                parser.add_argument(*negative, dest=name, action=_Given, nargs=0, const=False, default=None)
            continue
        shown = ",".join(default) if isinstance(default, list) else default
        suffix = f" (default: {shown})" if default is not None and SETTINGS[name].default_shown else ""
        metavar = SETTINGS[name].metavar or name.split("_")[-1].upper()
        parser.add_argument(
            *flags, dest=name, action=_Given, default=None, metavar=metavar, help=help_of(name) + suffix
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peftbench",
        description=f"Compare full fine-tuning and {len(METHODS) - 1} PEFT methods (LoRA and its variants, the "
        "low-rank, orthogonal, sparse, spectral and scaling families, IA3, prompt learning: `peftbench methods` lists "
        "them) on the same model, data and budget.",
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
    report.add_argument("--allow-other-files", action="store_true", help=help_of("allow_other_files"))
    report.add_argument(
        "--format",
        default="md,html",
        metavar="FORMATS",
        help=f"comma list of {', '.join(REPORT_FORMATS)}: md and html write report.md and "
        "report.html; csv and json write results.csv and results.jsonl, one row per model x method "
        "x seed (default: md,html)",
    )
    report.add_argument("--comparator", metavar="METHOD", help=help_of("comparator") + " (default: each run's own)")
    report.add_argument(
        "--margin", type=float, metavar="POINTS", help=help_of("margin") + " (default: each run's own, else 1)"
    )
    methods = commands.add_parser(
        "methods",
        help="list the fine-tuning methods; with --model, each one's trainable parameters on that model",
        description="List every method: whether it merges into the weights, its default learning rate and what "
        "it does. With --model, also the trainable parameters each would have on that model, or why it cannot apply.",
    )
    methods.add_argument("--model", metavar="MODEL", help=help_of("model").split(";")[0])
    methods.add_argument("--trust-remote-code", action="store_true", help=help_of("trust_remote_code"))
    return parser


REPORT_FORMATS = ("md", "html", "csv", "json")


def _report(args: argparse.Namespace) -> None:
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    unknown = [f for f in formats if f not in REPORT_FORMATS]
    if unknown or not formats:
        raise ConfigError(f"--format {args.format!r}: choose a comma list of {', '.join(REPORT_FORMATS)}")
    from peftbench.report.export import write_exports  # matplotlib and the statistics only when reporting
    from peftbench.report.write import analysed, write_report, write_verdict

    outputs = _outputs(args.outputs)
    destination = Path(args.output) if args.output else outputs[0]
    if destination.resolve() not in {output.resolve() for output in outputs}:  # a folder of the user's choosing
        rundir.check_owner(destination, rundir.REPORT_NAMES, args.allow_other_files)
    for folder in {*outputs, destination}:
        rundir.sweep_if_idle(folder)  # what a killed report or run left half-written
    results = analysed(outputs, _rule(args))
    _check_comparator(args.comparator, results.sections)
    written = []
    if {"md", "html"} & set(formats):
        written += [p for p in write_report(results, destination) if p.suffix.lstrip(".") in formats]
        written.append(write_verdict(results, destination))
    exports = tuple(kind for kind in ("csv", "json") if kind in formats)
    if exports:
        written += write_exports(results.sections, destination, exports)
    rundir.claim(destination)
    for path in written:
        print(path)
    damaged = [line for section in results.sections for line in section.damaged]
    if damaged:
        raise ConfigError(
            f"could not use {len(damaged)} result file(s); their runs are left out of the report and the verdict "
            f"({'; '.join(damaged)}). `peftbench run` with the same settings and --output sets them aside and does "
            "those runs again"
        )


def _outputs(given: list[str]) -> list[Path]:
    """The OUTPUT folders to report on, each once (ConfigError naming one given twice)."""
    outputs = [Path(path) for path in given]
    seen: dict[Path, Path] = {}
    for output in outputs:
        if output.resolve() in seen:
            raise ConfigError(
                f"OUTPUT {str(output)!r} is given twice (as {str(seen[output.resolve()])!r} too): give each run once"
            )
        seen[output.resolve()] = output
    return outputs


def _rule(args: argparse.Namespace):
    """The verdict's rule the report flags give, or None (each run's own)."""
    if args.comparator is None and args.margin is None:
        return None
    valid = SETTINGS["margin"].valid
    if args.margin is not None and not valid.holds(args.margin):
        raise ConfigError(f"--margin must be {valid.describe(False)}, got {args.margin!r}")
    from peftbench.report.decision import Rule

    return Rule(args.comparator, args.margin)


def _check_comparator(comparator: str | None, sections) -> None:
    for section in sections:
        ran = [runs.method for runs in section.trained]
        if comparator is not None and comparator not in ran:
            raise ConfigError(
                f"--comparator {comparator!r} did not run for {section.model} in {section.output}: choose from "
                f"{', '.join(ran)}"
            )


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
                from peftbench import api  # the model libraries only when running
                from peftbench.parallel import processes

                flags = getattr(args, "given", None) or {}
                api.run(build_config(load_yaml(args.config) if args.config else {}, flags, processes()))
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
