"""Steps per second of data-parallel SVI at 1 and 2 processes: DDP against the hand-written one.

Runs examples/distributed_logistic_regression.py's model with AutoRealNVP on N = 1e6
rows (gloo on 127.0.0.1, ranks launched as torchrun would). ``ddp`` is this package's
``fit_distributed`` on torch's DistributedDataParallel; ``allreduce`` is the same
function at commit ``LEGACY_COMMIT``, before DDP, which all-reduced the flattened
gradients itself after ``loss_and_grads`` (taken with ``git archive``, so nothing of it
stays in the package).

    python benchmarks/distributed.py                 # prints a Markdown table
    python benchmarks/distributed.py --num-steps 5 --num-data 20000 --repeats 1  # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The last commit whose ``fit_distributed`` averaged gradients by hand.
LEGACY_COMMIT = "c5b8dd2"
IMPLEMENTATIONS = ("ddp", "allreduce")
PROCESSES = (1, 2)


def export_legacy(folder: Path) -> Path:
    """``LEGACY_COMMIT``'s package and examples, unpacked under ``folder``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", LEGACY_COMMIT, "pyro_realnvp", "examples"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def worker(args: argparse.Namespace) -> None:
    """One rank: warm up, then time ``num_steps`` steps; each rank writes its numbers."""
    root = Path(args.code_root)
    sys.path[:0] = [str(root), str(root / "examples")]
    import torch
    from distributed_logistic_regression import logistic_regression, make_data

    import pyro_realnvp
    from pyro_realnvp import AutoRealNVP, DataParallelELBO, fit_distributed
    from pyro_realnvp.distributed import process_group, rank, seed_rank, shard

    if not Path(pyro_realnvp.__file__).is_relative_to(root):
        raise RuntimeError(f"imported {pyro_realnvp.__file__}, not the package under {root}")
    torch.set_num_threads(1)
    with process_group("gloo"):
        x, y, _ = make_data(args.num_data, args.dim)
        x, y = (t.clone() for t in shard(x, y))
        model = logistic_regression(x, y, args.num_data)
        seed_rank(0)
        guide = AutoRealNVP(model, num_layers=4)
        # One ELBO for both calls (a new DDP per call would be set up again), if it can.
        kwargs = {"loss": DataParallelELBO()} if args.impl == "ddp" else {}
        fit_distributed(model, guide, num_steps=3, progress=False, **kwargs)
        start, cpu_start = time.perf_counter(), time.process_time()
        fit_distributed(model, guide, num_steps=args.num_steps, progress=False, **kwargs)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        numel = sum(p.numel() for p in guide.parameters())
        result = {"steps_per_s": args.num_steps / wall, "cpu": cpu, "numel": numel}
        Path(args.result).with_name(f"rank{rank()}.json").write_text(json.dumps(result))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(impl: str, procs: int, code_root: Path, args: argparse.Namespace) -> dict:
    """Launch ``procs`` ranks of ``impl``; rank 0's steps/s and the busiest rank's CPU ms/step.

    On a machine shared with other work the wall clock measures this job's share of the
    CPUs as much as the job, while CPU time per step does not depend on that share.
    """
    folder = Path(tempfile.mkdtemp())
    argv = [sys.executable, __file__, "--worker", "--impl", impl, "--code-root", str(code_root)]
    argv += ["--result", str(folder / "result"), "--num-data", str(args.num_data)]
    argv += ["--dim", str(args.dim), "--num-steps", str(args.num_steps)]
    port, ranks = free_port(), []
    for r in range(procs):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(code_root)}
        if procs > 1:
            env |= {"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(procs)}
            env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        ranks.append(subprocess.Popen(argv, env=env))
    for proc in ranks:
        if proc.wait(timeout=900) != 0:
            raise RuntimeError(f"a benchmark rank failed: {proc.args}")
    results = [json.loads((folder / f"rank{r}.json").read_text()) for r in range(procs)]
    return {
        "steps_per_s": results[0]["steps_per_s"],
        "cpu_ms": 1e3 * max(r["cpu"] for r in results) / args.num_steps,
        "numel": results[0]["numel"],
    }


def table(runs: dict[tuple, list[dict]]) -> list[str]:
    """Markdown rows: best and median steps/s, CPU ms/step, and the own-core rate."""
    lines = [
        "| implementation | processes | steps/s, best | steps/s, median "
        "| CPU ms/step, busiest rank (median) | steps/s if each rank had its own core |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for (impl, procs), values in runs.items():
        speeds = [v["steps_per_s"] for v in values]
        cpu_ms = statistics.median(v["cpu_ms"] for v in values)
        lines.append(
            f"| {impl} | {procs} | {max(speeds):.2f} | {statistics.median(speeds):.2f} "
            f"| {cpu_ms:.0f} | {1e3 / cpu_ms:.2f} |"
        )
    return lines


def main(args: argparse.Namespace) -> dict[tuple, list[dict]]:
    """Measure every configuration ``repeats`` times, in interleaved rounds.

    The machine is shared, so load from other work comes and goes; interleaving spreads
    it over all configurations, and the best of the rounds is the least disturbed one.
    """
    legacy = export_legacy(Path(tempfile.mkdtemp()))
    roots = {"ddp": ROOT, "allreduce": legacy}
    load_before = os.getloadavg()[0]
    runs: dict[tuple, list[dict]] = {}
    for _ in range(args.repeats):
        for procs in PROCESSES:
            for impl in IMPLEMENTATIONS:
                result = measure(impl, procs, roots[impl], args)
                runs.setdefault((impl, procs), []).append(result)
    numel = next(iter(runs.values()))[0]["numel"]
    print(
        f"{platform.machine()}, {os.cpu_count()} logical CPUs shared with other jobs "
        f"(1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after); "
        f"N = {args.num_data:,}, D = {args.dim}, AutoRealNVP(num_layers=4) with {numel:,} "
        f"parameters, {args.num_steps} timed steps, {args.repeats} interleaved rounds, "
        f"allreduce = commit {LEGACY_COMMIT}"
    )
    print("\n".join(table(runs)))
    return runs


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-data", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--num-steps", type=int, default=30)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--code-root", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    worker(arguments) if arguments.worker else main(arguments)
