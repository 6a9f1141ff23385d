"""Time one step of Pyro's plain loop, as users write it, for AutoRealNVP and Pyro's guides.

``SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())``, one particle, one
process, one torch thread. For each target every guide is set up and warmed up, then timed
in interleaved rounds (so load from other processes hits them alike); the table gives the
median ms per step and AutoRealNVP's ratio to each rival, the median of the rounds' own.
Issue 30 asks for at most 1.25x ``AutoNormalizingFlow`` (4 affine couplings) and at most 2x
``AutoMultivariateNormal``.
Writes ``docs/plain-loop.md``.

Run ``python -m benchmarks.plain_loop`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pyro
import torch
from pyro.distributions.transforms import affine_coupling, iterated
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import (
    AutoMultivariateNormal,
    AutoNormal,
    AutoNormalizingFlow,
)
from pyro.optim import Adam

from benchmarks.environment import environment_lines
from benchmarks.posteriordb import load_target
from benchmarks.pyro_examples import pyro_eight_schools
from benchmarks.targets import Target, funnel
from pyro_realnvp import AutoRealNVP
from pyro_realnvp.infer.svi import fit_step

OUT = Path(__file__).resolve().parent.parent / "docs" / "plain-loop.md"


def coupling_flow(model: Callable) -> AutoNormalizingFlow:
    """Pyro's own coupling flow as its docs build it: 4 affine couplings."""
    return AutoNormalizingFlow(model, partial(iterated, 4, affine_coupling))


#: Name, guide factory; AutoRealNVP first, the rivals its ratios are taken to after.
GUIDES: dict[str, Callable] = {
    "AutoRealNVP": AutoRealNVP,
    "AutoNormal": AutoNormal,
    "AutoMultivariateNormal": AutoMultivariateNormal,
    "AutoNormalizingFlow (4 couplings)": coupling_flow,
}
#: Issue 30's bounds on AutoRealNVP's step, as a ratio to these rivals'.
BOUNDS = {"AutoNormalizingFlow (4 couplings)": 1.25, "AutoMultivariateNormal": 2.0}
#: AutoRealNVP through ``fit(fast=False)``: the fall-back on Pyro's ELBO, one step of it.
FALL_BACK = "AutoRealNVP, fit's fall-back"


def targets(posteriordb: bool) -> list[Target]:
    found = [funnel(6, num_draws=10), pyro_eight_schools()]
    if posteriordb:
        found.insert(1, load_target("eight_schools_noncentered"))
    return found


def steppers(target: Target, warmup: int) -> dict[str, Callable[[], float] | None]:
    """One plain SVI step per guide, each under its own name in a cleared param store
    (``None`` for a guide whose warm-up raised)."""
    pyro.clear_param_store()
    steps = {}
    for index, (name, make) in enumerate(GUIDES.items()):
        pyro.set_rng_seed(0)
        guide = make(target.model)
        guide._pyro_name = f"guide{index}"
        svi = SVI(target.model, guide, Adam({"lr": 0.01}), Trace_ELBO())
        steps[name] = partial(svi.step, *target.args)
        _warm_up(steps, name, target, warmup)
    pyro.set_rng_seed(0)
    guide = AutoRealNVP(target.model)
    guide._pyro_name = "fall_back"
    steps[FALL_BACK], _ = fit_step(target.model, guide, *target.args, num_steps=3000, fast=False)
    _warm_up(steps, FALL_BACK, target, warmup)
    return steps


def _warm_up(steps: dict, name: str, target: Target, warmup: int) -> None:
    """``warmup`` steps of ``steps[name]``; ``None`` in its place if one raises."""
    try:
        for _ in range(warmup):
            steps[name]()
    except (ValueError, RuntimeError) as error:
        print(f"{target.name}, {name} failed: {str(error).splitlines()[0][:90]}")
        steps[name] = None


def time_steps(steps: dict, rounds: int, per_round: int) -> dict[str, list[float]]:
    """ms per step in each of ``rounds`` interleaved rounds of ``per_round`` steps; empty
    for a guide whose loop raised (Pyro's own flow can meet a NaN draw and stop)."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    failed = {name for name, step in steps.items() if step is None}
    for _ in range(rounds):
        for name, step in steps.items():
            if name in failed:
                continue
            start = time.perf_counter()
            try:
                for _ in range(per_round):
                    step()
            except (ValueError, RuntimeError) as error:
                print(f"{name} failed: {str(error).splitlines()[0][:90]}", flush=True)
                failed.add(name)
                continue
            times[name].append((time.perf_counter() - start) / per_round * 1e3)
    return {name: [] if name in failed else times[name] for name in steps}


def median_ms(rounds: list[float]) -> float:
    """The median ms per step over the rounds; NaN for a guide that failed."""
    return statistics.median(rounds) if rounds else math.nan


def paired_ratio(ours: list[float], theirs: list[float]) -> tuple[float, float, float]:
    """``(median, lower quartile, upper quartile)`` of ``ours[i] / theirs[i]``: each
    round's ratio is of two guides timed a moment apart, so a spell of load from other
    processes moves both; NaN where either failed.

    Example:
        >>> paired_ratio([2.0, 4.0, 3.0], [1.0, 2.0, 1.0])  # the medians' ratio reads 3
        (2.0, 2.0, 2.5)
    """
    if not ours or len(ours) != len(theirs):
        return math.nan, math.nan, math.nan
    ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
    if len(ratios) == 1:
        return ratios[0], ratios[0], ratios[0]
    lower, median, upper = statistics.quantiles(ratios, n=4, method="inclusive")
    return median, lower, upper


def _ratio_cell(ours: list[float], theirs: list[float], bound: float | None) -> str:
    """``median [quartiles]`` of the paired ratios, and whether the median is within
    ``bound``."""
    median, lower, upper = paired_ratio(ours, theirs)
    if math.isnan(median):
        return "–"
    mark = "" if bound is None else (" (met)" if median <= bound else " (**not met**)")
    return f"{median:.2f} [{lower:.2f}, {upper:.2f}]{mark}"


def table(rows: list[tuple[str, int, dict[str, list[float]]]]) -> list[str]:
    rivals = [name for name in GUIDES if name != "AutoRealNVP"]
    head = ["target", "latents", *GUIDES, *(f"AutoRealNVP / {r}" for r in rivals),
            FALL_BACK, "fall-back / AutoRealNVP (at most 1)"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for target, dim, rounds in rows:
        ours = rounds["AutoRealNVP"]
        ratios = [_ratio_cell(ours, rounds[rival], BOUNDS.get(rival)) for rival in rivals]
        times = [f"{median_ms(rounds[n]):.2f}" if rounds[n] else "failed" for n in GUIDES]
        fall_back = [f"{median_ms(rounds[FALL_BACK]):.2f}",
                     _ratio_cell(rounds[FALL_BACK], ours, 1.0)]  # fmt: skip
        cells = [target, str(dim), *times, *ratios, *fall_back]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_doc(rows: list, args) -> None:
    bounds = ", ".join(f"{bound}x {name}" for name, bound in BOUNDS.items())
    text = [
        "# A step of Pyro's own loop: AutoRealNVP beside Pyro's guides",
        "",
        "Written by `benchmarks/plain_loop.py` (`make bench-plain-loop`); do not edit by hand.",
        "",
        *environment_lines(),
        f"- {torch.get_num_threads()} torch thread(s); no GPU row (none was measured)",
        "- the loop: `SVI(model, guide, pyro.optim.Adam({'lr': 0.01}), Trace_ELBO())`, one"
        " particle, every guide at its defaults",
        f"- median ms per step over {args.rounds} interleaved rounds of {args.steps} steps,"
        f" after {args.warmup} warm-up steps; a ratio is the median of the rounds' own"
        " ratios (the two guides timed a moment apart), its quartiles in brackets, and"
        " a bound is met where the median is within it",
        f"- issue 30's bounds on AutoRealNVP's step: at most {bounds}; and `fit`'s"
        " fall-back on Pyro's ELBO (`fit(..., fast=False)`: clipped, decayed Adam, the"
        " non-finite checks, the iterate average) no slower than Pyro's own loop",
        "- failed: the guide's loop raised (a NaN draw) during the warm-up or the timing;"
        " its ratio is left out (–)",
        "",
        *table(rows),
        "",
    ]
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text("\n".join(text))
    print(f"wrote {args.out}")


def main(args) -> list:
    torch.set_num_threads(1)
    rows = []
    for target in targets(not args.no_posteriordb):
        rounds = time_steps(steppers(target, args.warmup), args.rounds, args.steps)
        rows.append((target.name, target.dim, rounds))
        medians = {name: round(median_ms(each), 2) for name, each in rounds.items()}
        print(target.name, medians, flush=True)
    write_doc(rows, args)
    return rows


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # 7 rounds read the fall-back's ratio anywhere from 0.95 to 1.18 on this box.
    parser.add_argument("--rounds", type=int, default=21, help="interleaved timed rounds")
    parser.add_argument("--steps", type=int, default=60, help="steps per round")
    parser.add_argument("--warmup", type=int, default=30, help="untimed steps per guide")
    parser.add_argument("--no-posteriordb", action="store_true",
                        help="leave out posteriordb's eight schools")  # fmt: skip
    parser.add_argument("--out", type=Path, default=OUT, help="where to write the table")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 3 steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.warmup = 2, 3, 2
    return args


if __name__ == "__main__":
    main(parse())
