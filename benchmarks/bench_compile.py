"""torch.compile's break-even in training: peftbench's Trainer on the default run's data, eager against compiled.

    python benchmarks/bench_compile.py [--methods lora,full] [--epochs 2] [--mode default]

Each (method, variant) trains in its own fresh process, one after another, from the same seed on the same batches:
the compiled model is torch.compile(model, dynamic=True) (batches differ in length), and its first epoch pays for
compiling. Printed per method: each epoch's seconds, the compiled run's extra time in its first epoch (the compile
cost), the per-step saving in the later epochs, and the break-even: the optimizer steps of training it takes for
the saving to repay the compile cost, against the default run's own number of steps per method.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

import torch

from peftbench.config.run_config import RunConfig
from peftbench.data.splits import load_splits
from peftbench.errors import ConfigError
from peftbench.methods.apply import apply_method, build_optimizer
from peftbench.methods.registry import METHODS, check_method_names, learning_rate
from peftbench.methods.settings import MethodSettings
from peftbench.model.layout import TokenLimits
from peftbench.model.load import load_model
from peftbench.pipeline.console import quiet_libraries
from peftbench.training.trainer import Trainer, TrainOptions


def train(method: str, compiled: bool, epochs: int, mode: str) -> tuple[list[float], int, list[float]]:
    """Each epoch's wall seconds, the steps per epoch, and each epoch's mean training loss."""
    quiet_libraries()
    config = RunConfig(epochs=epochs, quiet=True)
    torch.manual_seed(config.seed)
    loaded = load_model(config.model)
    items = loaded.layout.encode(
        load_splits(config).train, TokenLimits(config.max_source_tokens, config.max_target_tokens)
    )
    settings = MethodSettings.from_config(config)
    model = apply_method(METHODS[method], loaded, settings)
    optimizer = build_optimizer(METHODS[method], model, learning_rate(METHODS[method], config.lr), settings)
    if compiled:
        model = torch.compile(model, dynamic=True, mode=mode)
    trainer = Trainer(model, optimizer, items, loaded.layout, TrainOptions.from_config(config, "no"))
    seconds, losses = [], []
    for _ in range(epochs):
        started = time.perf_counter()
        losses.append(trainer.train_epoch())
        seconds.append(time.perf_counter() - started)
    return seconds, trainer.steps_per_epoch, losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default="lora,full")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run (the default run's: 2)")
    parser.add_argument("--mode", default="default", help="torch.compile mode")
    args = parser.parse_args()
    args.methods = [name.strip() for name in args.methods.split(",") if name.strip()]
    if not args.methods:
        parser.error("--methods is empty; give a comma list such as lora,full")
    if args.epochs < 1:
        parser.error(f"--epochs must be at least 1, got {args.epochs}")
    try:
        check_method_names(args.methods)
    except ConfigError as exc:
        parser.error(str(exc))
    context = multiprocessing.get_context("spawn")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; the default run's data and budget")
    for method in args.methods:
        runs = {}
        for compiled in (False, True):
            with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
                runs[compiled] = pool.submit(train, method, compiled, args.epochs, args.mode).result()
        (eager, steps, eager_loss), (fast, _, fast_loss) = runs[False], runs[True]
        print(f"[{method}] {steps} steps per epoch")
        for label, (seconds, losses) in (("eager", (eager, eager_loss)), ("compiled", (fast, fast_loss))):
            print(
                f"  {label:9} epochs "
                + ", ".join(f"{s:.1f} s" for s in seconds)
                + "  losses "
                + ", ".join(f"{x:.6f}" for x in losses)
            )
        later = args.epochs - 1
        cost = fast[0] - eager[0]
        saving = (sum(eager[1:]) - sum(fast[1:])) / (later * steps) if later else float("nan")
        run_steps = steps * RunConfig().epochs
        if saving > 0:
            print(
                f"  compile cost {cost:.1f} s; saving {1000 * saving:.0f} ms/step after it; break-even after "
                f"{cost / saving:.0f} steps (the default run trains {run_steps} per method)"
            )
        else:
            print(f"  compile cost {cost:.1f} s; no saving per step after it ({1000 * saving:.0f} ms): never pays back")


if __name__ == "__main__":
    main()
