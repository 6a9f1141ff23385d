"""Steps per second of data-parallel SVI with 1 and 2 processes (gloo, this machine).

Runs examples/distributed_logistic_regression.py's model with AutoRealNVP: each process
evaluates the likelihood on its shard of N observations, then the processes average
their gradients. N is large so the model evaluation, which splits across processes,
dominates the step; a small N shows the fixed per-step cost that does not split.

    python benchmarks/distributed.py                 # prints a Markdown table
    python benchmarks/distributed.py --num-steps 5   # smoke run
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
sys.path[:0] = [str(ROOT), str(ROOT / "examples")]

#: (processes, torch threads per process)
CONFIGS = [(1, 1), (2, 1), (1, 2)]


def worker(args: argparse.Namespace) -> None:
    """One rank: warm up, then time ``num_steps`` steps; rank 0 writes steps/s."""
    import torch
    from distributed_logistic_regression import logistic_regression, make_data

    from pyro_realnvp import AutoRealNVP
    from pyro_realnvp.distributed import (
        fit_distributed,
        process_group,
        rank,
        seed_rank,
        shard,
    )

    torch.set_num_threads(args.threads)
    with process_group("gloo") as _:
        (num_data,) = args.num_data
        x, y, _ = make_data(num_data, args.dim)
        x, y = (t.clone() for t in shard(x, y))
        model = logistic_regression(x, y, num_data)
        seed_rank(0)
        guide = AutoRealNVP(model, num_layers=4)
        fit_distributed(model, guide, num_steps=3, progress=False)
        start, cpu_start = time.perf_counter(), time.process_time()
        fit_distributed(model, guide, num_steps=args.num_steps, progress=False)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        per_rank = Path(args.result).with_name(f"rank{rank()}.json")
        per_rank.write_text(json.dumps({"steps_per_s": args.num_steps / wall, "cpu": cpu}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(num_data: int, procs: int, threads: int, args: argparse.Namespace) -> dict:
    """Launch ``procs`` ranks on 127.0.0.1 as torchrun would.

    Returns rank 0's wall-clock steps/s and the CPU seconds per step of the busiest rank:
    on a machine shared with other work the wall clock measures this job's share of the
    CPUs as much as the job, while CPU time per step does not depend on that share.
    """
    folder = Path(tempfile.mkdtemp())
    port = free_port()
    argv = [sys.executable, __file__, "--worker", "--result", str(folder / "result")]
    argv += ["--num-data", str(num_data), "--dim", str(args.dim)]
    argv += ["--num-steps", str(args.num_steps), "--threads", str(threads)]
    ranks = []
    for r in range(procs):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        if procs > 1:
            env |= {
                "RANK": str(r),
                "LOCAL_RANK": str(r),
                "WORLD_SIZE": str(procs),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
            }
        ranks.append(subprocess.Popen(argv, env=env))
    for proc in ranks:
        if proc.wait(timeout=600) != 0:
            raise RuntimeError(f"a benchmark rank failed: {proc.args}")
    results = [json.loads((folder / f"rank{r}.json").read_text()) for r in range(procs)]
    return {
        "steps_per_s": results[0]["steps_per_s"],
        "cpu_ms": 1e3 * max(r["cpu"] for r in results) / args.num_steps,
    }


def main(args: argparse.Namespace) -> list[dict]:
    """Measure every configuration ``repeats`` times, in interleaved rounds.

    The machine is shared, so load from other work comes and goes; interleaving spreads
    it over all configurations, and the best of the rounds is the least disturbed one.
    """
    load_before = os.getloadavg()[0]
    runs: dict[tuple, list[dict]] = {}
    for _ in range(args.repeats):
        for num_data in args.num_data:
            for procs, threads in CONFIGS:
                key = (num_data, procs, threads)
                runs.setdefault(key, []).append(measure(num_data, procs, threads, args))
    load_after = os.getloadavg()[0]
    print(
        f"{platform.machine()}, {os.cpu_count()} logical CPUs shared with other jobs "
        f"(1-min load average {load_before:.1f} before, {load_after:.1f} after); "
        f"D = {args.dim}, AutoRealNVP(num_layers=4), {args.num_steps} timed steps, "
        f"{args.repeats} interleaved rounds"
    )
    print(
        "| N | processes | threads each | steps/s, best | steps/s, median "
        "| CPU ms/step, busiest rank (median) | steps/s if each rank had its own core |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for (num_data, procs, threads), values in runs.items():
        speeds = [v["steps_per_s"] for v in values]
        cpu_ms = statistics.median(v["cpu_ms"] for v in values)
        row = {"N": num_data, "procs": procs, "threads": threads, "best": max(speeds)}
        row |= {"median": statistics.median(speeds), "cpu_ms": cpu_ms}
        rows.append(row)
        own_core = f"{1e3 / cpu_ms:.2f}" if threads == 1 else "n/a"
        print(
            f"| {num_data:,} | {procs} | {threads} | {row['best']:.2f} | {row['median']:.2f} "
            f"| {cpu_ms:.0f} | {own_core} |"
        )
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-data", type=int, nargs="+", default=[1_000_000, 20_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--num-steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    worker(arguments) if arguments.worker else main(arguments)
