"""Writing what the report package makes: summary.md, report.md and report.html, and at the end of a run every output
derived from the records (curves, model cards, exports), from one load and one analysis."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from peftbench.errors import ConfigError
from peftbench.report.analysis import Analysis, analyse
from peftbench.report.blocks import header, how_to_read, random_note, report_blocks, verdict_blocks
from peftbench.report.card import render
from peftbench.report.decision import Rule, Verdict
from peftbench.report.document import Block, Bullets, Figure, Heading, Paragraph, to_html, to_markdown
from peftbench.report.export import EXPORT_KINDS, write_exports
from peftbench.report.load import Section, load_sections
from peftbench.report.table import failures, results_tables, several_seeds
from peftbench.report.verdict import judge
from peftbench.store import rundir
from peftbench.store.rundir import write_atomic, write_files


@dataclass
class Analysed:
    """Output folders' records, loaded once and analysed and judged once (when first asked): what every writer takes.
    rule: the verdict's rule for every section (None: each run's own)."""

    sections: list[Section]
    rule: Rule | None = None

    @cached_property
    def analyses(self) -> list[Analysis | None]:
        return [analyse(section) for section in self.sections]

    @cached_property
    def verdicts(self) -> list[Verdict | None]:
        return [
            judge(section, analysis, self.rule) for section, analysis in zip(self.sections, self.analyses, strict=True)
        ]


def analysed(outputs: list[Path], rule: Rule | None = None) -> Analysed:
    """The records under outputs, one section per model and folder, to be analysed once (under rule, if given)."""
    return Analysed(load_sections(outputs), rule)


def write_verdict(results: Analysed, destination: Path) -> Path:
    """destination/verdict.json: each model's verdict as data (null where there is none), the answer a script reads."""
    verdicts = [verdict.to_json() if verdict else None for verdict in results.verdicts]
    path = rundir.verdict_path(destination)
    write_atomic(path, json.dumps({"verdicts": verdicts}, indent=2, allow_nan=False) + "\n")
    return path


def write_report(results: Analysed, destination: Path) -> list[Path]:
    """Write report.md (figures in report_files/) and a self-contained report.html into destination, all files or
    none of them; returns both paths."""
    blocks = report_blocks(results.sections, results.analyses, results.verdicts)
    markdown, html, figures = rundir.report_paths(destination)
    files = {rundir.inside(figures, block.name, "figure"): block.png for block in blocks if isinstance(block, Figure)}
    try:
        write_files({**files, markdown: to_markdown(blocks), html: to_html(blocks, "peftbench comparison report")})
    except OSError as exc:
        raise ConfigError(f"cannot write the report to {str(destination)!r}: {exc.strerror or exc}") from None
    return [markdown, html]


def write_summary(results: Analysed, output: Path) -> str:
    """OUTPUT/summary.md and OUTPUT/verdict.json: for each model the answer, the verdict, the header, the comparison
    table (over the seeds where there are several) and the failed runs; returns what `peftbench run` prints at the
    end as Markdown: the answer first, then the tables and the verdict's lines."""
    several = several_seeds(results.sections)
    blocks: list[Block] = [Heading(1, "peftbench summary")]
    shown: list[Block] = []
    for section, analysis, judged in zip(results.sections, results.analyses, results.verdicts, strict=True):
        tables = results_tables([([runs.method], runs) for runs in section.methods], ["method"], several, analysis)
        verdict = verdict_blocks(section, analysis, judged)
        shown += [Heading(2, f"Model: {section.model}"), verdict[0], *tables, Heading(3, "Verdict"), *verdict[1:2]]
        blocks += [Heading(2, f"Model: {section.model}"), Heading(3, "Verdict"), *verdict, header(section), *tables]
        blocks += filter(None, [random_note(section.results)])
        missing = failures(section)
        if missing:
            blocks += [Paragraph("Failed or missing runs (see <method>/failed.json):"), Bullets(missing)]
    write_atomic(rundir.summary_path(output), to_markdown([*blocks, how_to_read(several)]))
    write_verdict(results, output)
    return to_markdown(shown)


def write_run_files(results: Analysed) -> None:
    """Into each finished method's folder, what is derived from its records: curves.png, and the adapter's model card
    with the intervals of its test scores (from the comparison's statistics)."""
    for section, analysis in zip(results.sections, results.analyses, strict=True):
        for runs in section.trained:
            for run in runs.finished:
                if run.directory is None:
                    continue
                write_atomic(run.directory.curves, run.curves)
                if run.directory.adapter.is_dir():
                    intervals = analysis.scores.get(runs.method) if analysis else None
                    run.directory.write_card(render(run.result, intervals, analysis.note if analysis else None))


@dataclass
class Published:
    """What the end of a run wrote: each comparison's summary as printed, the summary over seeds, the report."""

    summaries: dict[Path, str]
    over_seeds: str | None
    report: list[Path]


def publish(output: Path, comparisons: list[Path]) -> Published:
    """Everything derived from a run's records, each from one load and one analysis: per comparison (one seed) its
    summary, curves and cards; with several seeds the summary over them; then the exports and the report of OUTPUT."""
    several = comparisons != [output]
    summaries = {}
    for comparison in comparisons:
        one_seed = analysed([comparison])
        summaries[comparison] = write_summary(one_seed, comparison)
        write_run_files(one_seed)
    whole = analysed([output]) if several else one_seed
    over_seeds = write_summary(whole, output) if several else None
    write_exports(whole.sections, output, EXPORT_KINDS)
    return Published(summaries, over_seeds, write_report(whole, output))
