"""The comparison report, built from real tiny-model runs through the CLI: files, embedded images, numbers that
match metrics.json, confidence intervals, several seeds, several models, and failed or missing methods."""

from __future__ import annotations

import base64
import json
import math
import re
import shutil
import struct
import zlib
from html.parser import HTMLParser

import pytest

from peftbench.cli import main
from peftbench.report.stats import Estimate, estimate, holm
from peftbench.report.table import MEANINGLESS, columns, steady_speed
from peftbench.store.records import PHASES, RANDOM_WEIGHTS, Efficiency
from tests.helpers import tiny_run_args

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FAST = ("--epochs", "1", "--in-process", "--latency-prompts", "1", "--latency-new-tokens", "4")


@pytest.fixture(scope="module")
def gpt2_run(tmp_path_factory, tiny_models, articles):
    """One seed, every method, on tiny GPT-2 (the report is written at the end of the run); batches of 2, so that
    the epoch's 4 steps leave 2 steady ones past the warm steps."""
    output = tmp_path_factory.mktemp("report") / "gpt2"
    assert main(tiny_run_args(tiny_models["gpt2"], articles, output, *FAST, "--batch-size", "2")) == 0
    return output


@pytest.fixture(scope="module")
def seeds_run(tmp_path_factory, tiny_models, articles):
    """Two seeds, LoRA and IA3, on tiny GPT-2."""
    output = tmp_path_factory.mktemp("report") / "seeds"
    args = tiny_run_args(tiny_models["gpt2"], articles, output, "--seeds", "0,1", "--methods", "lora,ia3", *FAST)
    assert main(args) == 0
    return output


@pytest.fixture(scope="module")
def t5_run(tmp_path_factory, tiny_models, articles):
    output = tmp_path_factory.mktemp("report") / "t5"
    assert main(tiny_run_args(tiny_models["t5"], articles, output, "--methods", "lora,ia3", *FAST)) == 0
    return output


def _metrics(directory) -> dict:
    return json.loads((directory / "metrics.json").read_text())


def _tables(markdown: str) -> list[list[list[str]]]:
    """Every Markdown table: rows (header first, separator dropped) of stripped cells, bold markers removed."""
    tables, current = [], []
    for line in markdown.splitlines() + [""]:
        if line.startswith("|"):
            if not set(line) <= set("|-: "):
                cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
                current.append([cell.strip().strip("*") for cell in cells])
        elif current:
            tables.append(current)
            current = []
    return tables


def _rows(text: str, first: int = 0) -> dict[str, dict[str, str]]:
    """The results tables (quality and costs, the first two from table `first`) as {method: {column: cell}} (the
    'best' row under 'best')."""
    rows: dict[str, dict[str, str]] = {}
    for table in _tables(text)[first : first + 2]:
        header = table[0]
        for row in table[1:]:
            rows.setdefault(row[header.index("method")], {}).update(zip(header, row, strict=True))
    return rows


def _lead(cell: str) -> str:
    """A cell's value: before its ± half-width or its (low–high) interval."""
    return cell.split("±")[0].split(" (")[0].strip().replace(",", "")


def _number(cell: str) -> float:
    return float(_lead(cell))


def _shown(value: float, cell: str) -> bool:
    """Whether cell shows value rounded to the cell's own number of decimals."""
    text = _lead(cell)
    decimals = len(text.split(".")[1]) if "." in text else 0
    return _number(cell) == pytest.approx(round(value, decimals), abs=10**-decimals / 2 + 1e-12)


# Column of the report -> how to read it from metrics.json.
FIGURES = {
    "trainable params": lambda m: m["trainable_params"],
    "trainable %": lambda m: 100 * m["trainable_params"] / m["total_params"],
    "peak train memory (MiB)": lambda m: m["efficiency"]["peak_train_memory_bytes"] / 2**20,
    "train tokens/s (steady)": lambda m: steady_speed(Efficiency(**m["efficiency"])),
    "latency base (ms)": lambda m: m["efficiency"]["latency_ms"]["base"],
    "latency unmerged (ms)": lambda m: m["efficiency"]["latency_ms"]["unmerged"],
    "adapter size (MiB)": lambda m: m["efficiency"]["adapter_size_bytes"] / 2**20,
    "adapter load (ms)": lambda m: m["efficiency"]["adapter_load_ms"],
    # As deployed: merged where the method merges; its weights plus its generation's working memory.
    "inference memory (MiB)": lambda m: (
        sum(
            m["efficiency"]["inference_memory"]["merged" if m["efficiency"]["latency_ms"]["merged"] else "unmerged"][k]
            for k in ("weights_bytes", "increase_bytes")
        )
        / 2**20
    ),
    "final val loss": lambda m: m["epochs"][-1]["val_loss"],
    "test loss": lambda m: m["test"]["loss"],
    "test ROUGE-1": lambda m: m["test"]["rouge1"],
    "test ROUGE-2": lambda m: m["test"]["rouge2"],
    "test ROUGE-L": lambda m: m["test"]["rougeL"],
    "test BLEU": lambda m: m["test"]["bleu"],
}


def _embedded_pngs(page: str) -> list[bytes]:
    sources = re.findall(r'<img src="([^"]*)"', page)
    assert all(src.startswith("data:image/png;base64,") for src in sources), "only embedded PNGs"
    return [base64.b64decode(src.split(",", 1)[1], validate=True) for src in sources]


def _check_png(data: bytes) -> None:
    """A PNG signature, then a well-formed IHDR chunk (length 13, matching CRC) with a non-empty image size."""
    assert data[:8] == PNG_SIGNATURE
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    width, height = struct.unpack(">II", data[16:24])
    assert width > 0 and height > 0
    assert struct.unpack(">I", data[29:33])[0] == zlib.crc32(data[12:29])
    assert data.rstrip(b"\0")[-8:-4] == b"IEND"


class _Balance(HTMLParser):
    """Checks that every opened element is closed in order (void elements aside) and collects external links."""

    VOID = {"meta", "img", "br", "hr", "link"}

    def __init__(self):
        super().__init__()
        self.stack, self.external = [], []

    def handle_starttag(self, tag, attrs):
        self.external += [v for k, v in attrs if k in ("src", "href") and v and not v.startswith("data:")]
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack.pop() == tag, f"unbalanced </{tag}>"


def test_report_files_images_and_numbers(gpt2_run):
    report, page = (gpt2_run / "report.md").read_text(), (gpt2_run / "report.html").read_text()
    assert (gpt2_run / "summary.md").is_file()  # the one-seed layout is unchanged
    for method in ("full", "lora", "ia3"):
        assert (gpt2_run / method / "curves.png").is_file()

    pngs = _embedded_pngs(page)
    assert len(pngs) == 4 + 3  # per-epoch overlay, phases, scores with intervals, Pareto; one curves.png per method
    assert "Where the time went" in report
    for png in pngs:
        _check_png(png)
    for name in re.findall(r"\]\((report_files/[^)]+)\)", report):
        _check_png((gpt2_run / name).read_bytes())
    parser = _Balance()
    parser.feed(page)
    assert parser.stack == [] and parser.external == []
    assert "<script" not in page and "://" not in page  # ':' is not in the base64 alphabet

    rows = _rows(report)
    for method in ("full", "lora", "ia3"):
        metrics = _metrics(gpt2_run / method)
        for column, read in FIGURES.items():
            assert _shown(read(metrics), rows[method][column]), (method, column, rows[method][column])
        merged, cell = metrics["efficiency"]["latency_ms"]["merged"], rows[method]["latency merged (ms)"]
        assert cell == "-" if merged is None else _shown(merged, cell)

    for reference in ("zero-shot", "lead-3"):  # reference rows, scored on the same test examples
        metrics = _metrics(gpt2_run / reference)
        cell = rows[f"{reference} (reference)"]["test ROUGE-L"]
        assert _shown(metrics["test"]["rougeL"], cell) and re.search(r"\(\d\.\d{4}–\d\.\d{4}\)", cell)
    assert "Verdict" in report and "**Answer: " in report
    # The best of each column is bold in Markdown, has class "best" in HTML and is named in the 'best' row.
    fewest = min(("full", "lora", "ia3"), key=lambda m: _metrics(gpt2_run / m)["trainable_params"])
    assert rows["best"]["trainable params"] == fewest
    assert f"| **{_metrics(gpt2_run / fewest)['trainable_params']:,}** |" in report
    assert '<td class="best">' in page
    for header in ("Model:", "Data:", "train /", "Hyperparameters:", "Hardware:", "Libraries:", "torch", "Run date:"):
        assert header in report
    assert "Pareto-optimal" in report and "source (excerpt)" in report
    # Quality against inference memory is one of the Pareto panels, its front listed with the others.
    assert re.search(r"against inference memory \(MiB; merged where possible\): [a-z0-9, -]+[;.]", report)


def test_environment_recorded(gpt2_run):
    env = _metrics(gpt2_run / "lora")["environment"]
    assert {"python", "torch", "transformers", "peft", "accelerate", "platform", "cpu_count", "date"} <= set(env)
    assert env["cuda_device"] is None and env["cpu_count"] >= 1


def test_t_interval_and_holm_by_hand():
    result = estimate([1, 2, 3])  # mean 2, sd 1, standard error 1/sqrt(3), t(0.975, 2) = 4.302653
    assert result.mean == 2 and result.n == 3
    assert result.half_width == pytest.approx(4.302653 / math.sqrt(3), abs=1e-6)
    pair = estimate([0.5, 0.7])  # sd 0.141421, t(0.975, 1) = 12.706205
    assert pair.half_width == pytest.approx(12.706205 * 0.141421356 / math.sqrt(2), abs=1e-6)
    assert estimate([4.0]) == Estimate(4.0, None, 1)
    # Holm: sorted 0.01, 0.02, 0.04 times 3, 2, 1, each at least the one before: 0.03, 0.04, 0.04.
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_several_seeds_layout_and_intervals(seeds_run):
    for seed in (0, 1):
        for method in ("lora", "ia3"):
            assert _metrics(seeds_run / f"seed-{seed}" / method)["config"]["seed"] == seed
        assert (seeds_run / f"seed-{seed}" / "summary.md").is_file()
    assert not (seeds_run / "lora").exists()
    runs = {m: [_metrics(seeds_run / f"seed-{s}" / m) for s in (0, 1)] for m in ("lora", "ia3")}
    assert runs["lora"][0]["epochs"][1]["train_loss"] != runs["lora"][1]["epochs"][1]["train_loss"]  # seeds differ

    for name in ("report.md", "summary.md"):
        rows = _rows((seeds_run / name).read_text())
        for method, metrics in runs.items():
            assert rows[method]["seeds"] == "2 of 2"
            for column in ("final val loss", "train tokens/s (steady)", "latency unmerged (ms)"):
                values = [FIGURES[column](m) for m in metrics]
                cell = rows[method][column]
                assert _shown(sum(values) / 2, cell), (column, cell, values)
                if values[0] != values[1]:  # hand-computed: t(0.975, 1) * |a - b| / 2
                    half = float(cell.split("±")[1].replace(",", ""))
                    expected = 12.706205 * abs(values[0] - values[1]) / 2
                    assert half == pytest.approx(expected, rel=0.01, abs=1e-4), (column, cell)
            # Test scores: the mean over seeds, with a bootstrap interval over seeds and examples.
            cell = rows[method]["test ROUGE-L"]
            assert _shown(sum(m["test"]["rougeL"] for m in metrics) / 2, cell) and "–" in cell
        for column in ("test ROUGE-L", "final val loss"):
            assert rows["best"][column] in ("lora", "ia3") or rows["best"][column].startswith("no significant")
        assert rows["best"]["trainable params"] in ("lora", "ia3")  # identical over seeds: exact
    page = (seeds_run / "report.html").read_text()
    assert "seeds crossed with the test examples they share" in page
    for png in _embedded_pngs(page):
        _check_png(png)


def test_phase_times_add_up_to_at_most_the_wall_time(gpt2_run, t5_run):
    """Every phase of a method's run is recorded once it ran, none negative, and together no more than its wall time
    (which covers them all); epoch-by-epoch phases add up over the epochs."""
    for output, methods in ((gpt2_run, ("full", "lora", "ia3")), (t5_run, ("lora", "ia3"))):
        for method in methods:
            efficiency = _metrics(output / method)["efficiency"]
            phases, wall = efficiency["phase_seconds"], efficiency["wall_seconds"]
            assert set(phases) == set(PHASES), (output, method)
            assert all(seconds >= 0 for seconds in phases.values())
            assert phases["training"] == pytest.approx(efficiency["train_seconds"], rel=0.05, abs=0.05)
            assert 0 < sum(phases.values()) <= wall, (method, phases, wall)


def test_failed_and_missing_methods_are_reported(gpt2_run, seeds_run, tmp_path, capsys):
    output = tmp_path / "partial"
    shutil.copytree(gpt2_run, output)
    (output / "ia3" / "metrics.json").unlink()
    (output / "lora" / "metrics.json").unlink()
    (output / "lora" / "failed.json").write_text(json.dumps({"method": "lora", "error": "RuntimeError: boom"}))
    assert main(["report", str(output)]) == 0
    report = (output / "report.md").read_text()
    rows = _rows(report)
    assert rows["ia3"]["trainable params"] == "failed/missing" and rows["lora"]["trainable params"] == "failed/missing"
    assert _shown(_metrics(output / "full")["test"]["rougeL"], rows["full"]["test ROUGE-L"])
    assert "lora, seed 0: failed: RuntimeError: boom" in report and "ia3, seed 0: failed:" in report

    seeds = tmp_path / "seeds"
    shutil.copytree(seeds_run, seeds)
    shutil.rmtree(seeds / "seed-1" / "ia3")  # a method that never ran for one seed
    assert main(["report", str(seeds)]) == 0
    report = (seeds / "report.md").read_text()
    rows = _rows(report)
    assert rows["ia3"]["seeds"] == "1 of 2" and rows["lora"]["seeds"] == "2 of 2"
    assert _shown(_metrics(seeds / "seed-0" / "ia3")["test"]["rougeL"], rows["ia3"]["test ROUGE-L"])
    assert "ia3, seed 1: missing" in report


def test_a_failing_method_leaves_failed_json_for_the_report(tiny_models, articles, tmp_path, capsys):
    output = tmp_path / "out"
    # Training that diverges fails only while it trains (a bad target, say, is refused before any method runs).
    args = tiny_run_args(tiny_models["gpt2"], articles, output, "--methods", "full", "--lr", "1e30", *FAST)
    assert main(args) == 2
    failure = json.loads((output / "full" / "failed.json").read_text())
    assert failure["method"] == "full" and failure["seed"] == 0 and "training loss is" in failure["error"]
    assert main(["report", str(output)]) == 0
    report = (output / "report.md").read_text()
    assert _rows(report)["full"]["trainable params"] == "failed/missing"
    assert "full, seed 0: failed: training loss is" in report and "No method finished" in report


def test_two_models_one_report(gpt2_run, t5_run, tmp_path, tiny_models, capsys):
    destination = tmp_path / "both"
    assert main(["report", str(gpt2_run), str(t5_run), "--output", str(destination)]) == 0
    assert str(destination / "report.html") in capsys.readouterr().out
    report = (destination / "report.md").read_text()
    assert f"## Model: {tiny_models['gpt2']}" in report and f"## Model: {tiny_models['t5']}" in report
    combined = _tables(report)[0]
    assert combined[0][:2] == ["model", "method"]
    trained = [row for row in combined[1:] if "(reference)" not in row[1]]  # unranked: no 'best' row
    assert len(trained) < len(combined) - 1  # each model's references are rows too
    labels = {(row[0], row[1]) for row in trained}
    gpt2, t5 = tiny_models["gpt2"].name, tiny_models["t5"].name
    assert labels == {(gpt2, "full"), (gpt2, "lora"), (gpt2, "ia3"), (t5, "lora"), (t5, "ia3")}
    for row in trained:
        metrics = _metrics((gpt2_run if row[0] == gpt2 else t5_run) / row[1])
        assert _shown(metrics["test"]["rougeL"], row[combined[0].index("test ROUGE-L")])
    page = (destination / "report.html").read_text()
    assert len(_embedded_pngs(page)) == (4 + 3) + (4 + 2)  # per model: 4 comparison figures, one curve per method
    assert str(tiny_models["t5"]) not in (gpt2_run / "report.md").read_text()  # written to --output only


def test_report_of_empty_or_missing_directory_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("peftbench: error: no results in") and "metrics.json" in err and "Traceback" not in err
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_bad_seeds_are_config_errors(tiny_models, articles, tmp_path, capsys):
    for seeds, message in (("0,x", "integers"), ("1,1", "twice"), ("-1", "non-negative")):
        assert main(tiny_run_args(tiny_models["gpt2"], articles, tmp_path / "o", "--seeds", seeds)) == 2
        assert message in capsys.readouterr().err


def test_costs_with_intervals(gpt2_run):
    """The costs block: each method's latency over the base model's from its own paired rounds (a ratio with its
    interval, or no measurable difference), training against full's, and the memory account adding up to the peak."""
    report = (gpt2_run / "report.md").read_text()
    assert "### Costs with intervals" in report and "Caution: the base model's latency" not in report
    speeds = next(t for t in _tables(report) if t[0][:2] == ["method", "training speed over full's"])
    memory = next(t for t in _tables(report) if t[0][:2] == ["method", "runtime (MiB)"])
    speed_rows, memory_rows = ({row[0]: dict(zip(t[0], row, strict=True)) for row in t[1:]} for t in (speeds, memory))
    assert speed_rows["full"]["training speed over full's"] == "(the comparator)"
    assert all(row["steady tokens/s (steps)"].startswith(tuple("0123456789")) for row in speed_rows.values())
    assert all("(2 steps; 10-90% of steps " in row["steady tokens/s (steps)"] for row in speed_rows.values())
    for method in ("lora", "ia3"):  # each step paired with full's on the same batch
        assert speed_rows[method]["training speed over full's"].endswith("2 paired steps)"), speed_rows[method]
    for method in ("full", "lora", "ia3"):
        efficiency = _metrics(gpt2_run / method)["efficiency"]
        rounds = efficiency["latency_rounds"]["decode_ms"]
        logs = [math.log(mine / base) for mine, base in zip(rounds["unmerged"], rounds["base"], strict=True)]
        cell = speed_rows[method]["unmerged per-token decode over base"]
        geometric = math.exp(sum(logs) / len(logs))  # the ratio: the geometric mean of the rounds' ratios
        assert cell.startswith((f"{geometric:.2f}x [", "no measurable difference (within ±")), cell
        assert f"{len(logs)} rounds" in cell
        peak = efficiency["peak_train_memory_bytes"]
        assert sum(efficiency["train_memory"].values()) == peak
        assert _shown(peak / 2**20, memory_rows[method]["peak (MiB)"]), memory_rows[method]
    assert speed_rows["full"]["merged per-token decode over base"] == "-"  # full fine-tuning has nothing to merge
    inference = next(t for t in _tables(report) if t[0][:3] == ["method", "model", "weights (MiB)"])
    for method, model, weights, generation, both, peak in inference[1:]:  # as each method's record measured them
        used = _metrics(gpt2_run / method)["efficiency"]["inference_memory"][model]
        assert _shown(used["weights_bytes"] / 2**20, weights) and _shown(used["peak_bytes"] / 2**20, peak)
        assert _shown((used["weights_bytes"] + used["increase_bytes"]) / 2**20, both), (generation, both)
    assert {(row[0], row[1]) for row in inference[1:]} >= {("full", "base"), ("full", "unmerged"), ("lora", "merged")}


def test_random_weights_are_marked_and_their_quality_is_not_shown(gpt2_shape, gpt2_run, articles, tmp_path):
    output = tmp_path / "random"
    assert main(tiny_run_args(gpt2_shape, articles, output, "--methods", "lora,ia3", *FAST)) == 0
    summary, report = (output / "summary.md").read_text(), (output / "report.md").read_text()
    rows = _rows(summary)
    quality = [column.label for column in columns(["rouge1", "rouge2", "rougeL", "bleu"]) if column.quality]
    assert quality == ["final val loss", "test loss", "test ROUGE-1", "test ROUGE-2", "test ROUGE-L", "test BLEU"]
    for method in ("lora", "ia3"):
        metrics = _metrics(output / method)
        assert metrics["config"]["model_weights"] == RANDOM_WEIGHTS
        assert all(rows[method][column] == MEANINGLESS for column in quality)
        assert _shown(FIGURES["train tokens/s (steady)"](metrics), rows[method]["train tokens/s (steady)"])
    assert all(rows["best"][column] == "" for column in quality)  # no winner among meaningless figures
    assert rows["best"]["trainable params"] == "ia3"
    for text in (summary, report):
        assert "parameters; random weights: speed and memory only)" in text  # the header's model line
        assert f"{MEANINGLESS}: random weights: speed and memory only." in text
    assert "Quality against cost" not in report and "Per-epoch scores" in report
    # A pretrained model is recorded as such and keeps every column.
    assert _metrics(gpt2_run / "lora")["config"]["model_weights"] == "pretrained"
    assert MEANINGLESS not in (gpt2_run / "summary.md").read_text()
