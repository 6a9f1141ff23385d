"""Stability where users train: Pyro's plain loop on real data sizes, every ELBO, both dtypes.

Run ``python -m benchmarks.stability --out docs/stability.md`` (``make bench-stability``);
``--smoke`` runs a few steps of everything. Each fit is one job in ``--workers`` processes
with one torch thread each. Reported per job: whether it finished (a non-finite loss in
Pyro's own loop raises, and that is a failure: there are no redraws there), its final
ELBO from fresh draws on the full data, and the seconds it took. The Laplace set-up time
at 250 latent dimensions and 20,000 rows is timed in the main process.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import statistics
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import (
    SVI,
    JitTrace_ELBO,
    JitTraceMeanField_ELBO,
    RenyiELBO,
    Trace_ELBO,
    TraceGraph_ELBO,
    TraceMeanField_ELBO,
)
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

from benchmarks.guides import fit_counting_redraws
from pyro_realnvp import AutoRealNVP, fit_fast
from pyro_realnvp._internal.compat import full_data_plates

__all__ = ["hierarchical", "main", "parse_args", "regression", "run_job"]

GUIDES = {
    "AutoRealNVP": AutoRealNVP,
    "AutoMultivariateNormal": AutoMultivariateNormal,
    "AutoNormal": AutoNormal,
}
ELBOS = {
    "Trace_ELBO": Trace_ELBO,
    "TraceMeanField_ELBO": TraceMeanField_ELBO,
    "TraceGraph_ELBO": TraceGraph_ELBO,
    "RenyiELBO(0.5, 4)": lambda: RenyiELBO(alpha=0.5, num_particles=4),
    "JitTrace_ELBO": JitTrace_ELBO,
    "JitTraceMeanField_ELBO": JitTraceMeanField_ELBO,
}


def regression(num_rows: int, num_weights: int, *, seed: int = 123, dtype=torch.float32):
    """Bayesian linear regression, ``w ~ N(0, 1)``, ``sigma ~ HalfNormal(1)``, as in issue 12.

    Example:
        >>> model, args = regression(50, 3)
        >>> sorted(pyro.poutine.trace(model).get_trace(*args).reparameterized_nodes)
        ['sigma', 'w']
    """
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num_rows, num_weights, generator=generator, dtype=dtype)
    noise = torch.randn(num_rows, generator=generator, dtype=dtype)
    y = x @ torch.randn(num_weights, generator=generator, dtype=dtype) + 0.5 * noise

    def model(x, y):
        w = pyro.sample("w", dist.Normal(x.new_zeros(()), 1.0).expand([num_weights]).to_event(1))
        sigma = pyro.sample("sigma", dist.HalfNormal(x.new_ones(())))
        with pyro.plate("rows", len(y)):
            # (x * w).sum(-1), not x @ w: it broadcasts over particles (the fast path's need)
            pyro.sample("y", dist.Normal((x * w).sum(-1), sigma), obs=y)

    return model, (x, y)


def hierarchical(num_rows: int = 10_000, *, subsample_size: int = 256, seed: int = 7):
    """A 134-d hierarchical regression: HalfCauchy scales, a Dirichlet, an LKJ Cholesky
    factor, groups nested in regions, ``num_rows`` rows read ``subsample_size`` at a time.

    Latents: mu (4), tau (4), L_omega (6), w (4), beta (1), sigma (1), region (2),
    b (2 regions x 14 groups x 4 = 112): 134 unconstrained dimensions.

    Example:
        >>> model, args = hierarchical(100, subsample_size=10)
        >>> guide = pyro.infer.autoguide.AutoDiagonalNormal(model); _ = guide(*args)
        >>> guide.latent_dim
        134
    """
    generator = torch.Generator().manual_seed(seed)
    region = torch.randint(2, (num_rows,), generator=generator)
    group = torch.randint(14, (num_rows,), generator=generator)
    category = torch.randint(5, (num_rows,), generator=generator)
    x = torch.randn(num_rows, 4, generator=generator)
    b = 1.0 + 0.5 * torch.randn(2, 14, 4, generator=generator)
    shares = torch.tensor([0.4, 0.3, 0.1, 0.1, 0.1])
    mean = (b[region, group] * x).sum(-1) + 3.0 * shares[category] + 0.3 * (region - 0.5)
    y = mean + 0.8 * torch.randn(num_rows, generator=generator)

    def model(region, group, category, x, y):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0).expand([4]).to_event(1))
        tau = pyro.sample("tau", dist.HalfCauchy(1.0).expand([4]).to_event(1))
        l_omega = pyro.sample("L_omega", dist.LKJCholesky(4, 2.0))
        w = pyro.sample("w", dist.Dirichlet(torch.ones(5)))
        beta = pyro.sample("beta", dist.Normal(0.0, 5.0))
        sigma = pyro.sample("sigma", dist.HalfCauchy(1.0))
        with pyro.plate("regions", 2, dim=-2):
            r = pyro.sample("region", dist.Normal(0.0, 1.0))
            with pyro.plate("groups", 14, dim=-1):
                scale_tril = tau[..., None] * l_omega
                coef = pyro.sample("b", dist.MultivariateNormal(mu, scale_tril=scale_tril))
        with pyro.plate("data", len(y), subsample_size=subsample_size, dim=-1) as idx:
            eta = (coef[..., region[idx], group[idx], :] * x[idx]).sum(-1)
            eta = eta + beta * w[..., category[idx]] + r[..., region[idx], 0]
            pyro.sample("y", dist.Normal(eta, sigma), obs=y[idx])

    return model, (region, group, category, x, y)


def full_data_elbo(model, guide, args, num_draws: int) -> float:
    """ELBO on the full data (subsampling off), one draw at a time; ``nan`` if it fails."""
    total = 0.0
    with torch.no_grad(), full_data_plates(), poutine.block():
        for _ in range(num_draws):
            guide_trace = poutine.trace(guide).get_trace(*args)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args)
            total += float(model_trace.log_prob_sum() - guide_trace.log_prob_sum())
    return total / num_draws


def _make_problem(job: dict):
    if job["problem"] == "hierarchical":
        return hierarchical()
    rows, weights = job["size"]
    dtype = torch.float64 if job.get("dtype") == "float64" else torch.float32  # "fast": f32
    return regression(rows, weights, dtype=dtype)


def _train(job: dict, model, guide, args) -> int:
    """Train as the job says; returns the redraws ``fit`` made (0 in the plain loop)."""
    options = {"num_steps": job["steps"], "lr": 0.01, "progress": False}
    if job["loop"] == "fit":
        return fit_counting_redraws(model, guide, *args, **options)[1]
    if job["loop"] == "fit_fast":
        fit_fast(model, guide, *args, **options)
        return 0
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), ELBOS[job["objective"]]())
    for _ in range(job["steps"]):
        svi.step(*args)
    return 0


def run_job(job: dict) -> dict:
    """One fit of one guide to one problem with one seed, and its final ELBO."""
    torch.set_num_threads(1)
    model, args = _make_problem(job)
    pyro.clear_param_store()
    pyro.set_rng_seed(job["seed"])
    result = dict(job)
    start = time.perf_counter()
    try:
        guide = GUIDES[job["guide"]](model)
        result["redraws"] = _train(job, model, guide, args)
    except (RuntimeError, ValueError) as error:
        result["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
        return result
    result["seconds"] = time.perf_counter() - start
    result["elbo"] = full_data_elbo(model, guide, args, job["draws"])
    return result


def setup_time(num_rows: int = 20_000, num_weights: int = 249, repeats: int = 5) -> dict:
    """Seconds to set up each guide (its first call) at ``num_weights + 1`` latent dims,
    ``repeats`` times under Pyro seeds 0, 1, ... (``init_to_median`` draws): sorted.

    One untimed set-up on a small model comes first, so torch's one-time imports are not
    counted: ``torch._dynamo``, which any torch optimizer's first construction imports
    (about 1 s on this box), is paid once per process, by the set-up's L-BFGS or else by
    the user's own Adam.
    """
    small, small_args = regression(200, 4)
    for name in GUIDES:
        GUIDES[name](small)(*small_args)
    model, args = regression(num_rows, num_weights)
    times = {}
    for name in ("AutoRealNVP", "AutoMultivariateNormal"):
        runs = []
        for seed in range(repeats):
            pyro.clear_param_store()
            pyro.set_rng_seed(seed)
            start = time.perf_counter()
            GUIDES[name](model)(*args)
            runs.append(time.perf_counter() - start)
        times[name] = sorted(runs)
    return times


def _job(problem, size, guide, loop, objective, seed, args, **extra) -> dict:
    return {"problem": problem, "size": size, "guide": guide, "loop": loop,
            "objective": objective, "seed": seed, "steps": args.steps, "draws": args.draws,
            **extra}  # fmt: skip


def _jobs(args: argparse.Namespace) -> list[dict]:
    jobs = [
        _job("regression", size, guide, "svi", "Trace_ELBO", seed, args)
        for size in args.sizes
        for guide in ("AutoRealNVP", "AutoMultivariateNormal")
        for seed in args.seeds
    ]
    jobs += [
        _job("hierarchical", None, guide, loop, "Trace_ELBO", seed, args, draws=args.hier_draws)
        for guide in GUIDES
        for loop in ("fit", "svi")
        for seed in args.seeds[:5]
    ]
    other = [(name, "float32") for name in ELBOS if name != "Trace_ELBO"]
    jobs += [
        _job("regression", args.sizes[0], "AutoRealNVP", "svi", name, seed, args, dtype=dtype)
        for name, dtype in [*other, ("Trace_ELBO", "float64")]
        for seed in args.seeds[:3]
    ]
    jobs += [
        _job("regression", size, "AutoRealNVP", "fit_fast", "Trace_ELBO", seed, args, dtype="fast")
        for size in args.sizes
        for seed in args.seeds[:3]
    ]
    return sorted(jobs, key=lambda j: j["problem"] != "hierarchical")


def _summary(runs: list[dict]) -> str:
    done = [r for r in runs if "error" not in r]
    cells = [f"{len(done)}/{len(runs)}"]
    if done:
        elbos = [r["elbo"] for r in done]
        cells.append(f"{statistics.median(elbos):.1f} [{min(elbos):.1f}, {max(elbos):.1f}]")
        cells.append(f"{statistics.median(r['seconds'] for r in done):.1f}")
        cells.append(str(sum(r.get("redraws", 0) for r in done)))
    else:
        cells += ["-", "-", "-"]
    errors = sorted({r["error"] for r in runs if "error" in r})
    return " | ".join(cells) + " | " + ("; ".join(errors)[:200] or "")


def _group(results, **match) -> list[dict]:
    return [r for r in results if all(r.get(k) == v for k, v in match.items())]


def _regression_gap(results, size) -> str:
    """Worst seed's ELBO of AutoRealNVP minus AutoMultivariateNormal's (same seed)."""
    mvn = {r["seed"]: r["elbo"] for r in _group(results, size=size, objective="Trace_ELBO",
           guide="AutoMultivariateNormal", dtype=None) if "elbo" in r}  # fmt: skip
    ours = {r["seed"]: r.get("elbo", -math.inf) for r in _group(
        results, size=size, objective="Trace_ELBO", guide="AutoRealNVP", dtype=None)}  # fmt: skip
    gaps = [ours[s] - mvn[s] for s in ours if s in mvn]
    return f"{min(gaps):+.2f}" if gaps else "-"


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def render(
    results: list[dict], setup: dict, args: argparse.Namespace, seconds: float, commit: str
) -> str:
    head = "| runs | finished | ELBO median [min, max] | s per fit | redraws | errors |"
    rule = "|---|---|---|---|---|---|"
    lines = [
        "# Stability",
        "",
        f"Written by `python -m benchmarks.stability {' '.join(args.argv)}` at commit "
        f"{commit} in {seconds / 60:.1f} min on this project's 2-core CPU box. Every fit "
        "uses lr 0.01; `svi` is Pyro's own loop, `SVI(model, guide, Adam({'lr': 0.01}), "
        "ELBO)`, where a non-finite loss raises "
        "(a failure); `fit` is pyro_realnvp's loop. ELBO: mean log-weight over "
        f"{args.draws} guide draws on the full data ({args.hier_draws} for the hierarchical "
        "model).",
        "",
        f"## Linear regression, Pyro's plain loop, {args.steps} steps, seeds {args.seeds}",
        "",
        head,
        rule,
    ]
    for size in args.sizes:
        for guide in ("AutoRealNVP", "AutoMultivariateNormal"):
            runs = _group(results, size=size, guide=guide, objective="Trace_ELBO", dtype=None)
            lines.append(f"| N={size[0]}, D={size[1]}: {guide} | {_summary(runs)} |")
    lines += [""] + [
        f"Worst seed's ELBO difference, AutoRealNVP minus AutoMultivariateNormal, N={s[0]}, "
        f"D={s[1]}: {_regression_gap(results, s)} nats." for s in args.sizes
    ] + ["", f"## 134-d hierarchical model, 10,000 rows read 256 at a time, {args.steps} steps",
         "", head, rule]  # fmt: skip
    for guide in GUIDES:
        for loop in ("fit", "svi"):
            runs = _group(results, problem="hierarchical", guide=guide, loop=loop)
            lines.append(f"| {guide}, {loop} | {_summary(runs)} |")
    lines += ["", f"## AutoRealNVP under Pyro's other ELBOs (N={args.sizes[0][0]}, "
              f"D={args.sizes[0][1]}, plain loop)", "", head, rule]  # fmt: skip
    for name in ELBOS:
        dtype = None if name == "Trace_ELBO" else "float32"
        runs = _group(
            results, size=args.sizes[0], guide="AutoRealNVP", objective=name, dtype=dtype
        )
        runs = [r for r in runs if r["seed"] in args.seeds[:3]]
        lines.append(f"| {name}, float32 | {_summary(runs)} |")
    runs = _group(results, size=args.sizes[0], objective="Trace_ELBO", dtype="float64")
    lines.append(f"| Trace_ELBO, float64 | {_summary(runs)} |")
    for size in args.sizes:
        runs = _group(results, size=size, loop="fit_fast")
        lines.append(f"| fit_fast (N={size[0]}, D={size[1]}), float32 | {_summary(runs)} |")
    lines += _setup_lines(setup, args)
    return "\n".join(lines)


def _setup_lines(setup: dict, args: argparse.Namespace) -> list[str]:
    repeats = len(next(iter(setup.values())))
    lines = [
        "",
        f"## Set-up time at {args.setup_dims} latent dimensions, {args.setup_rows:,} rows",
        "",
        f"Seconds to the first call, {repeats} set-ups under Pyro seeds 0, 1, ... "
        "(`init_to_median`'s draws), after one untimed set-up on a small model: torch imports "
        "`torch._dynamo` at any optimizer's first construction (about 1 s, once per "
        "process), here the start's L-BFGS, else the user's Adam.",
        "",
        "| guide | median [min, max] | every set-up |",
        "|---|---|---|",
    ]
    return lines + [
        f"| {name} | {statistics.median(runs):.2f} [{runs[0]:.2f}, {runs[-1]:.2f}] | "
        f"{', '.join(f'{r:.2f}' for r in runs)} |"
        for name, runs in setup.items()
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few steps of everything")
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown here")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--hier-draws", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.sizes = [(2000, 20), (20000, 50)]
    if args.smoke:
        args.steps, args.seeds, args.draws, args.hier_draws = 3, [0], 4, 2
        args.sizes, args.workers = [(200, 3), (300, 4)], 1
    return args


def main(args: argparse.Namespace) -> str:
    start = time.perf_counter()
    commit = _commit()  # the code the workers import now, not what is checked out at the end
    jobs = _jobs(args)
    results = []
    if args.workers > 1:
        with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
            for result in pool.imap_unordered(run_job, jobs):
                results.append(result)
                print(json.dumps(result), flush=True)
    else:
        for job in jobs:
            results.append(run_job(job))
            print(json.dumps(results[-1]), flush=True)
    args.setup_rows, args.setup_dims = (2000, 10) if args.smoke else (20_000, 250)
    setup = setup_time(args.setup_rows, args.setup_dims - 1, repeats=2 if args.smoke else 5)
    text = render(results, setup, args, time.perf_counter() - start, commit)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return text


if __name__ == "__main__":
    main(parse_args())
