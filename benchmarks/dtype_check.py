"""Precision check: does every method train, evaluate, generate and get timed at one and the same precision?

    python benchmarks/dtype_check.py [--model M] [--dataset D] [--methods all] [--precision auto] [--json PATH]

The base model's zero-shot evaluation and then each method run once, briefly, through peftbench's own run_zero_shot
and run_method in this process, while a forward hook on every linear layer records the dtype of what it computes,
phase by phase: training, validation and test loss, batched generation, latency (base model, unmerged, merged) and
the merge check. Every phase should compute at the run's precision (bf16 for --precision bf16 on a GPU, fp32 on
CPU); a phase at another one is timed or scored on a different numeric path from the one that trained. A method
that fails to run makes the exit status 1; a mixed precision is reported (MISS), not an error.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
from pathlib import Path

import torch

from peftbench.config.run_config import EMBEDDED, RunConfig
from peftbench.data.retention import load_held_out
from peftbench.data.splits import load_splits
from peftbench.methods.registry import METHODS, check_method_names
from peftbench.model.layout import CausalLayout, Seq2SeqLayout
from peftbench.pipeline import costs, method_run
from peftbench.pipeline.console import quiet_libraries
from peftbench.store import rundir
from peftbench.store.records import INFERENCE_MODELS
from peftbench.training.evaluate import Evaluator
from peftbench.training.trainer import Trainer, mixed_precision

LATENCIES = tuple(f"latency {name}" for name in INFERENCE_MODELS)
PHASES = ("train", "loss", "generate", *LATENCIES, "merge check")
DTYPES = {"no": "float32", "bf16": "bfloat16", "fp16": "float16"}  # accelerate's mixed_precision -> compute dtype


class DtypeRecorder:
    """The dtypes that linear layers output during each phase of the current method's run."""

    def __init__(self):
        self.phase: str | None = None
        self.seen: dict[str, set[str]] = {}
        self.owners: dict[int, str] = {}  # while models are timed together: each layer's model's latency phase

    def start(self) -> None:
        self.seen = {}

    def record(self, module, _inputs, output) -> None:
        if self.phase and isinstance(module, torch.nn.Linear) and isinstance(output, torch.Tensor):
            phase = self.owners.get(id(module), self.phase)
            self.seen.setdefault(phase, set()).add(str(output.dtype).removeprefix("torch."))

    def during(self, function, phase: str):
        """function, recording under phase while it runs."""

        @functools.wraps(function)
        def labelled(*args, **kwargs):
            outer = self.phase
            self.phase = phase
            try:
                return function(*args, **kwargs)
            finally:
                self.phase = outer

        return labelled

    def timing(self, time_models):
        """time_models, recording each model's layers under that model's own latency phase: the models are timed
        in interleaved rounds, so the phase cannot change between them."""

        @functools.wraps(time_models)
        def labelled(models, *args, **kwargs):
            self.owners = {id(layer): f"latency {name}" for name, model in models.items() for layer in model.modules()}
            try:
                return self.during(time_models, "latency")(models, *args, **kwargs)
            finally:
                self.owners = {}

        return labelled


def instrument(recorder: DtypeRecorder) -> None:
    """Label the phases of peftbench's own run (observation only: every function runs unchanged)."""
    torch.nn.modules.module.register_module_forward_hook(recorder.record)
    Trainer.train_epoch = recorder.during(Trainer.train_epoch, "train")
    Evaluator.loss_sums = recorder.during(Evaluator.loss_sums, "loss")
    for layout in (CausalLayout, Seq2SeqLayout):  # the loss of generated examples, read with generation's prompts
        layout.prefilled_loss = recorder.during(layout.prefilled_loss, "loss")
    Evaluator.generate = recorder.during(Evaluator.generate, "generate")
    costs.time_models = recorder.timing(costs.time_models)
    costs.merge_agreement = recorder.during(costs.merge_agreement, "merge check")


def verdict(seen: dict[str, set[str]], expected: str) -> bool:
    """One precision throughout: every phase computed in exactly the run's dtype."""
    return bool(seen) and all(dtypes == {expected} for dtypes in seen.values())


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=EMBEDDED, help="as peftbench run's (default: the embedded SmolLM2)")
    parser.add_argument("--dataset", default=EMBEDDED, help="as peftbench run's (default: the embedded CNN/DM sample)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma list (default: every method)")
    parser.add_argument("--precision", default="auto", help="as peftbench run's --precision (default: auto)")
    parser.add_argument("--json", type=Path, help="also write the dtypes per method and phase to this file")
    args = parser.parse_args()
    args.methods = [name.strip() for name in args.methods.split(",") if name.strip()]
    check_method_names(args.methods)
    return args


def main() -> int:
    args = parse_args()
    quiet_libraries()
    recorder = DtypeRecorder()
    instrument(recorder)
    results, failed = {}, []
    expected = DTYPES[mixed_precision(args.precision)]
    with tempfile.TemporaryDirectory(prefix="dtype-check-") as output:
        # Small enough for every method in a minute or two; each phase still runs on real data.
        config = RunConfig(
            model=args.model,
            dataset=args.dataset,
            train_size=4,
            eval_size=2,
            test_size=2,
            epochs=1,
            batch_size=2,
            eval_batch_size=2,
            max_source_tokens=64,
            max_target_tokens=16,
            max_new_tokens=4,
            latency_prompts=1,
            latency_new_tokens=2,
            precision=args.precision,
            quiet=True,
            in_process=True,
            output=output,
        )
        config.validate()
        splits, held_out = load_splits(config), load_held_out(config)
        zero_shot = None
        for name in [rundir.ZERO_SHOT, *args.methods]:
            recorder.start()
            try:
                if zero_shot is None:  # the base model's epoch 0, which every method's run starts from
                    zero_shot = method_run.run_zero_shot(splits, held_out, config)[0]
                else:
                    directory = rundir.method_dir(Path(output), name)
                    method_run.run_method(name, splits, held_out, config, directory, zero_shot)
            except Exception as exc:  # noqa: BLE001 - one method's failure is reported with the others' results
                failed.append(name)
                print(f"[{name}] failed: {type(exc).__name__}: {exc}", flush=True)
                if zero_shot is None:
                    break  # no method runs without it
            results[name] = {phase: sorted(recorder.seen[phase]) for phase in PHASES if phase in recorder.seen}
            results[name]["one_precision"] = name not in failed and verdict(recorder.seen, expected)

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(
        f"dtype check: precision {args.precision} ({expected}) on {device}, torch {torch.__version__}; the dtypes "
        "that linear layers output in each phase (- where the method has no such phase)"
    )
    print(f"{'method':<10}" + "".join(f"{phase:>18}" for phase in PHASES) + f"{'one precision':>15}")
    for name, seen in results.items():
        cells = ["+".join(seen[phase]) if phase in seen else "-" for phase in PHASES]
        shown = "FAILED" if name in failed else "PASS" if seen["one_precision"] else "MISS"
        print(f"{name:<10}" + "".join(f"{cell:>18}" for cell in cells) + f"{shown:>15}")
    mixed = [name for name, seen in results.items() if name not in failed and not seen["one_precision"]]
    print(
        f"one precision throughout: {len(results) - len(mixed) - len(failed)} of {len(results)} runs"
        + (f"; mixed: {', '.join(mixed)}" if mixed else "")
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    if args.json:
        report = {
            "precision": args.precision,
            "dtype": expected,
            "device": device,
            "torch": torch.__version__,
            "methods": results,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
