"""Wall time of one comparison run by each executor: local (one trial after another, a fresh process each) against
Ray (every trial at once, --cpus-per-trial CPUs each), start-up included, and whether their quality figures agree.

    python benchmarks/bench_executor.py --model M --dataset D [--ray-address local] [-- more peftbench run flags]

Each executor's run is a fresh `peftbench run` process into its own output folder, timed from start to exit, so
Python's and torch's imports and Ray's start-up (a local Ray instance with --ray-address local) count as the user
would see them. Ray's start-up alone (ray.init of a local instance, then ray.shutdown) is timed apart in a fresh
process too.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUALITY = ("epochs", "test", "trainable_params", "total_params")
RAY_STARTUP = """
import time
start = time.perf_counter()
import ray
ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="ERROR")
ready = time.perf_counter()
ray.shutdown()
print(f"{ready - start:.1f} {time.perf_counter() - ready:.1f}")
"""


def timed_run(arguments: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "peftbench", "run", *arguments], check=True)
    return time.perf_counter() - start


def quality(output: Path) -> dict[str, dict]:
    """Every trial's quality figures, by its metrics.json's path under output."""
    return {
        str(path.relative_to(output)): {k: json.loads(path.read_text())[k] for k in QUALITY}
        for path in sorted(output.rglob("metrics.json"))
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--ray-address", default="local", help="local (a Ray started for the run, timed) or HOST:PORT")
    parser.add_argument("extra", nargs="*", help="more `peftbench run` flags, after --")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-executor-"))
    common = ["--model", args.model, "--dataset", args.dataset, "--quiet", *args.extra]
    local = timed_run([*common, "--output", str(folder / "local")])
    remote = timed_run(
        [*common, "--output", str(folder / "ray"), "--executor", "ray", "--ray-address", args.ray_address]
    )
    startup = subprocess.run([sys.executable, "-c", RAY_STARTUP], check=True, capture_output=True, text=True)
    ready, shutdown = startup.stdout.split()
    same = quality(folder / "local") == quality(folder / "ray")
    print(f"local executor: {local:.1f} s")
    print(f"ray executor:   {remote:.1f} s (--ray-address {args.ray_address})")
    print(f"ray start-up alone: {ready} s to start a local instance, {shutdown} s to stop it")
    print(f"quality figures of the {len(quality(folder / 'local'))} trials and references identical: {same}")
    print(f"outputs in {folder}")


if __name__ == "__main__":
    main()
