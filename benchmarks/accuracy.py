"""Fit every guide to every target at one budget and write the side-by-side tables.

Run ``python -m benchmarks.accuracy --out docs/benchmarks.md`` (``make bench``) for the
full run, ``--smoke`` for a fast check of the whole pipeline. Every guide is trained by
:func:`pyro_realnvp.fit` with the same optimizer, learning-rate schedule, steps and
particles; each (target, seed, guide) fit is one job, run in ``--workers`` processes
with one torch thread each. The interleaved timing runs afterwards in the main process.

The ``zuko RealNVP`` column is zuko's ``RealNVP`` at zuko 1.6's defaults (3 couplings,
hidden widths (64, 64), ReLU), wrapped by Pyro's ``ZukoToPyro``: like the other columns,
the guide a user gets by following its documentation (Pyro's flow tutorials now point to
zuko), not one resized to AutoRealNVP's 8 layers. It needs the ``bench`` extra
(``make bench`` installs it); without zuko the column is left out, and the output says so.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import runpy
import shlex
import statistics
import sys
import time
import warnings
from datetime import datetime, timezone
from functools import cache
from importlib.metadata import version
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.importance import psis_diagnostic, vectorized_importance_weights
from pyro.optim import Adam, ClippedAdam

from benchmarks.environment import environment_lines
from benchmarks.guides import GUIDES, ZUKO_GUIDE, fit_counting_redraws, make_guide
from benchmarks.metrics import moment_errors, sliced_w1, standardize
from benchmarks.pdb_report import examples_section, median_of, posteriordb_sections, yes
from benchmarks.posteriordb import POSTERIORDB_TARGETS
from benchmarks.posteriordb.classic import SPECS as CLASSIC_SPECS
from benchmarks.pyro_examples import OTHER_PYRO_EXAMPLES, PYRO_EXAMPLES
from benchmarks.targets import EXACT_TARGETS, Target
from pyro_realnvp import NonFiniteLossError, importance_resample
from pyro_realnvp.infer import MAX_PARTICLES, NUM_STEPS, fit_step, train
from pyro_realnvp.infer.svi import CLIP_NORMS, FLOW_LR_DECAY, FLOW_LRS, LR

__all__ = ["main", "parse_args", "run_job"]

HEADLINE = ("funnel_d10", "banana_d2", "banana_d8", "corr_gauss_d20")
#: The exact targets' k-hat target (issue 29): the median reading at most this.
HEADLINE_KHAT = 0.45
TIMING_TARGETS = HEADLINE
#: Label prefix of the fits run in Pyro's plain SVI loop rather than ``fit``.
PLAIN = "plain loop: "
#: Label prefix of the fits run in Pyro's loop as its tutorials write it (posteriordb).
USER_LOOP = "user loop: "
#: The guides compared in the plain loop, and its vectorized particles.
PLAIN_GUIDES = ("AutoRealNVP", "AutoIAFNormal")
PLAIN_PARTICLES = 8
#: The rivals also run at more particles (``--rival-particles``): Pyro's guides that
#: train at all at their defaults, and zuko's RealNVP where installed.
PARTICLE_RIVALS = tuple(
    g for g in ("AutoNormal", "AutoMultivariateNormal", "AutoIAFNormal",
                "ANF 4 coupling+perm", ZUKO_GUIDE) if g in GUIDES
)  # fmt: skip
#: Guides also trained in Pyro's loop as its tutorials write it: ours (`fit` trains Pyro's
#: guides with the loop's own updates, tests/infer/test_svi.py, so theirs would repeat it).
USER_LOOP_GUIDES = ("AutoRealNVP",)
#: Where the user's loop runs by default: the first eight posteriordb posteriors and Pyro's
#: examples (all 37 at one particle would add about 25 min to the 90 the run may take).
USER_LOOP_TARGETS = (*CLASSIC_SPECS, *PYRO_EXAMPLES)
#: The guides at one particle by default: ours and Pyro's three that train at their
#: defaults; Pyro's coupling flows and zuko's run at more particles (their better setting).
DEFAULT_GUIDES = ("AutoRealNVP", "AutoNormal", "AutoMultivariateNormal", "AutoIAFNormal")
#: Targets whose fits take longest: started first so that the pool's tail is short.
SLOW_TARGETS = ("lotka_volterra", "diamonds", "hmm_drive_0", "garch11", "gp_pois_regr")
#: Steps of the wall-time comparison built from the interleaved timing, and its guides.
STEPS_FOR_WALL = NUM_STEPS
_WALL_PAIR = ("AutoRealNVP", "AutoIAFNormal")
#: Fresh draw sets behind each fit's k-hat, their median reported. One set's reading
#: spans 0.46-0.70 over five sets at one fit (eight_schools_centered), and the median of
#: five still 0.41-0.78 over eight disjoint fives at another (the funnel, docs/tuning.md).
KHAT_SETS = 20
#: Sets of fresh guide draws behind each W1, and reference subsets behind each floor,
#: their medians reported: one set's W1 of exact draws spans 0.028-0.061 on
#: corr_gauss_d20, whose single floor read 0.029 (docs/tuning.md, issue 30 fourth session).
W1_SETS = 5
#: Importance-resampled sets behind each resampled W1 (each from 4x as many proposals).
RESAMPLED_SETS = 3
#: Draws in each exact target's reference sets (a posteriordb half: 5 chains of 1000).
REFERENCE_SET = 5000
#: Guide draws behind each importance-resampled draw.
RESAMPLE_PROPOSALS = 4
#: Threshold of the time-to-KL table, in nats.
KL_THRESHOLD = 0.25
#: Window of the moving average of the training loss used for time-to-KL.
KL_WINDOW = 100


@cache
def get_target(name: str, num_draws: int) -> Target:
    if name in EXACT_TARGETS:  # as many draws per set as a posteriordb half holds
        return EXACT_TARGETS[name](num_draws=max(num_draws, REFERENCE_SET))
    if name in PYRO_EXAMPLES:
        return PYRO_EXAMPLES[name]()
    if name in OTHER_PYRO_EXAMPLES:
        return OTHER_PYRO_EXAMPLES[name]()
    return POSTERIORDB_TARGETS[name]()


def _reference_pair(target: Target, num_draws: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``num_draws`` of the first reference set, and the whole second set,
    standardised."""
    first, second = target.reference
    return (standardize(first[:num_draws], target.ref_mean, target.ref_sd),
            standardize(second, target.ref_mean, target.ref_sd))  # fmt: skip


def floor_sets(target: Target, num_draws: int) -> list[float]:
    """W1 between the first reference set and ``W1_SETS`` random subsets of ``num_draws``
    of the second: what an exact sampler's own W1 spreads over (its median is the floor)."""
    first, second = _reference_pair(target, num_draws)
    generator = torch.Generator().manual_seed(0)
    subsets = (torch.randperm(len(second), generator=generator)[:num_draws]
               for _ in range(W1_SETS))  # fmt: skip
    return [sliced_w1(second[index], first) for index in subsets]


def _time_to_kl(losses: list[float], log_z: float | None, seconds_per_step: float):
    """First step where the moving-average loss + log Z (a KL estimate) is below threshold."""
    if log_z is None or len(losses) < KL_WINDOW:
        return None
    loss = torch.tensor(losses, dtype=torch.float64)
    smooth = loss.unfold(0, KL_WINDOW, 1).mean(-1) + log_z
    below = torch.nonzero(smooth <= KL_THRESHOLD)
    if len(below) == 0:
        return None
    step = int(below[0]) + KL_WINDOW
    return step, step * seconds_per_step


def run_job(job: dict) -> dict:
    """Fit one guide to one target with one seed, then measure it against the truth."""
    torch.set_num_threads(1)
    target = get_target(job["target"], job["draws"])
    result = {key: job[key] for key in ("target", "seed", "guide")}
    pyro.clear_param_store()
    pyro.set_rng_seed(job["seed"])
    try:
        base = job.get("base", job["guide"].removeprefix(PLAIN).removeprefix(USER_LOOP))
        particles = job["particles"]
        if particles == "matched":
            particles = matched_particles(job["target"], job["draws"], job["steps"])
        guide = make_guide(base, target.model)
        start = time.perf_counter()
        if job["guide"].startswith(PLAIN):
            losses, result["redraws"] = plain_svi_loop(target, guide, job["steps"]), 0
            result.update(path="plain loop", num_particles=PLAIN_PARTICLES)
        elif job["guide"].startswith(USER_LOOP):
            losses, result["redraws"] = user_svi_loop(target, guide, job["steps"]), 0
            result.update(path="user loop", num_particles=1)
        else:
            options = {} if particles is None else {"num_particles": particles}
            if job.get("tail_fraction") is not None and base == "AutoRealNVP":
                options["tail_fraction"] = job["tail_fraction"]
            losses, result["redraws"] = fit_counting_redraws(
                target.model, guide, *target.args, num_steps=job["steps"], progress=False,
                **options,
            )  # fmt: skip
            result.update(path=losses.method, note=losses.note[:300],
                          num_particles=losses.num_particles)  # fmt: skip
        wall = time.perf_counter() - start
        result.update(_evaluate(target, guide, job["draws"]))
    except (RuntimeError, ValueError) as error:  # NonFiniteLossError is a RuntimeError
        result["error"] = f"{type(error).__name__}: {str(error)[:200]}"
        return result
    result.update(wall_s=wall, steps_run=len(losses), stopped=getattr(losses, "stopped", ""))
    result["ms_per_step"] = 1e3 * wall / len(losses)
    result["time_to_kl"] = _time_to_kl(losses, target.log_z, wall / len(losses))
    return result


@cache
def matched_particles(target_name: str, num_draws: int, num_steps: int) -> int:
    """The particles ``fit`` gives AutoRealNVP on this target at its defaults (its fast
    path's own choice), so a rival can be given as many."""
    target = get_target(target_name, num_draws)
    with pyro.get_param_store().scope():
        guide = make_guide("AutoRealNVP", target.model, label="particle_count")
        _, history = fit_step(target.model, guide, *target.args, num_steps=num_steps)
    return history.num_particles


def user_svi_loop(target: Target, guide, num_steps: int) -> list[float]:
    """Pyro's loop as its tutorials write it: ``SVI``, ``Adam({"lr": 0.01})``,
    ``Trace_ELBO()`` (one particle), no schedule."""
    svi = SVI(target.model, guide, Adam({"lr": 0.01}), Trace_ELBO())
    return [svi.step(*target.args) for _ in range(num_steps)]


def plain_svi_loop(target: Target, guide, num_steps: int) -> list[float]:
    """Pyro's own loop as users write it: ``SVI``, ``ClippedAdam`` at lr 1e-2 decayed to
    1e-3, ``Trace_ELBO`` with ``PLAIN_PARTICLES`` vectorized particles."""
    optim = ClippedAdam({"lr": 1e-2, "lrd": 0.1 ** (1 / num_steps)})
    elbo = Trace_ELBO(num_particles=PLAIN_PARTICLES, vectorize_particles=True)
    svi = SVI(target.model, guide, optim, elbo)
    return [svi.step(*target.args) for _ in range(num_steps)]


@torch.no_grad()
def _evaluate(target: Target, guide, num_draws: int) -> dict:
    """ELBO, KL and k-hat; against the reference, where there is one, moments and W1."""
    if target.reference is not None:
        num_draws = min(num_draws, len(target.reference[0]))
    nesting = target.max_plate_nesting
    log_w, model_trace, _ = vectorized_importance_weights(
        target.model, guide, *target.args, num_samples=num_draws, max_plate_nesting=nesting
    )
    k_hats = [
        float(psis_diagnostic(
            target.model, guide, *target.args, num_particles=num_draws,
            max_plate_nesting=nesting,
        ))
        for _ in range(KHAT_SETS)
    ]  # fmt: skip
    elbo = float(log_w.mean())
    scores = {
        "elbo": elbo,
        "elbo_se": float(log_w.std() / math.sqrt(num_draws)),
        "kl": None if target.log_z is None else target.log_z - elbo,
        "k_hat": statistics.median(k_hats),
        "k_hat_sets": k_hats,
    }
    if target.reference is None:
        return scores
    draws = _columns(target, model_trace.nodes, num_draws)
    mean_error, sd_low, sd_high = moment_errors(draws, target.ref_mean, target.ref_sd)
    reference, _ = _reference_pair(target, num_draws)
    w1_sets = [sliced_w1(standardize(draws, target.ref_mean, target.ref_sd), reference)]
    for _ in range(W1_SETS - 1):  # fresh sets: one set's W1 spreads as widely as the floor's
        nodes = vectorized_importance_weights(
            target.model, guide, *target.args, num_samples=num_draws, max_plate_nesting=nesting
        )[1].nodes
        draws = standardize(_columns(target, nodes, num_draws), target.ref_mean, target.ref_sd)
        w1_sets.append(sliced_w1(draws, reference))
    return {
        **_resampled(target, guide, num_draws, reference),
        **scores,
        "mean_error": mean_error,
        "sd_low": sd_low,
        "sd_high": sd_high,
        "w1": statistics.median(w1_sets),
        "w1_sets": w1_sets,
    }


def _columns(target: Target, nodes: dict, num_draws: int) -> torch.Tensor:
    """The draws of ``target``'s columns in a trace's ``nodes``, ``(num_draws, D)``."""
    columns = [nodes[site]["value"].reshape(num_draws, -1) for site, _ in target.columns]
    return torch.cat(columns, 1).float()


def _resampled(target: Target, guide, num_draws: int, reference: torch.Tensor) -> dict:
    """W1 of ``num_draws`` draws importance-resampled from ``RESAMPLE_PROPOSALS`` times as
    many, their proposals' k-hat and effective sample size."""
    w1_sets = []
    for _ in range(RESAMPLED_SETS):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a k-hat above 0.7 is reported, not warned
            try:
                resampled = importance_resample(
                    target.model, guide, *target.args, num_samples=num_draws,
                    proposals=RESAMPLE_PROPOSALS, max_plate_nesting=0,
                )  # fmt: skip
            except ValueError as error:  # NaN weights: no resampling to report
                return {"resample_error": str(error)[:200]}
        latent = {site: {"value": value} for site, value in resampled.draws.latent.items()}
        draws = standardize(_columns(target, latent, num_draws), target.ref_mean, target.ref_sd)
        w1_sets.append(sliced_w1(draws, reference))
    return {
        "w1_resampled": statistics.median(w1_sets),
        "resample_khat": resampled.khat,
        "resample_ess": resampled.ess,
        "resample_distinct": resampled.distinct,
        "resample_proposals": resampled.num_proposals,
    }


def interleaved_timing(target_name: str, steps: int, rounds: int, draws: int) -> dict:
    """``(ms per step, ratio to AutoNormal, set-up seconds)`` of each guide under ``fit``.

    Each guide's step (what ``fit`` would run: the fast path for AutoRealNVP) is built
    once, its set-up timed, then every guide's step is timed in turns within one
    process. Includes AutoRealNVP at Pyro's coupling size (4 layers, one hidden layer of
    width 10 D, as ``affine_coupling``'s default) for a like-for-like comparison."""
    torch.set_num_threads(1)
    target = get_target(target_name, draws)
    _warm_up(target)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guides = {name: make_guide(name, target.model) for name in GUIDES}
    equal = "AutoRealNVP (4 layers, width 10D)"
    guides[equal] = make_guide(
        "AutoRealNVP", target.model, label=equal, num_layers=4, hidden_dims=(10 * target.dim,)
    )
    built, setup = {}, {}
    for name, guide in guides.items():
        start = time.perf_counter()
        # fit's own choice of step, built once so that the clock sees steps only.
        built[name] = _fit_step(target, guide)
        train(built[name], 5, progress=False)  # the first steps set Pyro guides up
        setup[name] = time.perf_counter() - start
    times: dict[str, list[float]] = {name: [] for name in guides}
    for round_ in range(rounds):
        names = list(guides)
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            start = time.perf_counter()
            try:
                train(built[name], steps, progress=False)
            except NonFiniteLossError:  # a bad draw ends this round early: not a timing
                continue
            times[name].append(1e3 * (time.perf_counter() - start) / steps)
    ms = {name: statistics.median(v) if v else math.nan for name, v in times.items()}
    return {name: (value, value / ms["AutoNormal"], setup[name]) for name, value in ms.items()}


def _fit_step(target: Target, guide):
    """The step ``fit`` would run for ``guide`` at its defaults (``NUM_STEPS``), built but not
    yet run."""
    return fit_step(target.model, guide, *target.args, num_steps=NUM_STEPS)[0]


def _warm_up(target: Target) -> None:
    """Build and run every guide's step once, untimed, so that one-off imports (torch's
    first LBFGS imports the compiler stack, about 1.4 s) are charged to no guide."""
    for name in GUIDES:
        pyro.clear_param_store()
        guide = make_guide(name, target.model)
        step = _fit_step(target, guide)
        train(step, 2, progress=False)


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return str(value) if isinstance(value, float) else "—"
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    return f"{value:.{max(0, digits - 1 - magnitude)}f}" if magnitude < 5 else f"{value:.3g}"


def _cell(values: list, digits: int = 3) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    if len(values) == 1:
        return _fmt(values[0], digits)
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{_fmt(mid, digits)} [{_fmt(low, digits)}, {_fmt(high, digits)}]"


def _table(results, targets, guides, cell) -> list[str]:
    lines = ["| target | " + " | ".join(guides) + " |", "|---" * (len(guides) + 1) + "|"]
    for target in targets:
        row = []
        for guide in guides:
            runs = [r for r in results if r["target"] == target and r["guide"] == guide]
            failed = [r for r in runs if "error" in r]
            text = cell([r for r in runs if "error" not in r])
            row.append(text + (f" ({len(failed)} failed)" if failed else ""))
        lines.append(f"| {target} | " + " | ".join(row) + " |")
    return lines


def _metric(key):
    return lambda runs: _cell([r[key] for r in runs])


def _kl_and_wall(runs) -> str:
    if not runs:
        return "—"
    wall = statistics.median(r["wall_s"] for r in runs)
    return f"{_cell([r['kl'] for r in runs])} · {_fmt(wall, 2)} s"


def _sd_range(runs) -> str:
    if not runs:
        return "—"
    low = statistics.median(r["sd_low"] for r in runs)
    high = statistics.median(r["sd_high"] for r in runs)
    return f"{_fmt(low, 2)}–{_fmt(high, 2)}"


def _time_to_kl_cell(runs) -> str:
    reached = [r["time_to_kl"] for r in runs if r["time_to_kl"] is not None]
    if not reached:
        return "not reached"
    seconds = statistics.median(t[1] for t in reached)
    steps = statistics.median(t[0] for t in reached)
    return f"{_fmt(seconds, 2)} s ({steps:.0f} steps, {len(reached)}/{len(runs)})"


def _redraws_cell(runs) -> str:
    return "—" if not runs else str(sum(r.get("redraws", 0) for r in runs))


def _targets_check(results, exact, pdb, timing) -> list[str]:
    """The issues' targets for AutoRealNVP, met or not, with the figures."""
    # Pyro's own guides; issue 13 adds zuko's RealNVP to the KL comparison.
    labels = sorted({r["guide"] for r in results if ":" not in r["guide"]})
    # Every rival at every particle count run: "AutoNormal", "AutoNormal ×8", ...
    rivals = [g for g in labels if g.split(" ×")[0] != "AutoRealNVP"]
    lines = ["| target | figure | met |", "|---|---|---|"]
    for name in [t for t in HEADLINE if t in exact]:
        lines += _headline_checks(results, name, rivals)
    lines += _gaussian_floor_check(results, pdb)
    for name, rows in timing.items():
        # fit's steps: AutoRealNVP's as its fit ran them (its stop rule), the rival's all.
        ran = median_of(results, name, "AutoRealNVP", "steps_run") or STEPS_FOR_WALL
        steps_of = dict(zip(_WALL_PAIR, (ran, STEPS_FOR_WALL), strict=True))
        ours, iaf = (rows[g][2] + steps_of[g] * rows[g][0] / 1e3 for g in _WALL_PAIR)
        lines.append(
            f"| {name}: fit's wall time ≤ 2× AutoIAFNormal's (set-up + the steps fit ran, "
            f"{ran:g} and {STEPS_FOR_WALL}, interleaved timing) | {_fmt(ours, 2)} s vs "
            f"2·{_fmt(iaf, 2)} s | {yes(ours <= 2 * iaf)} |"
        )
    for name, rows in timing.items():
        ours = rows["AutoRealNVP (4 layers, width 10D)"][0]
        pyro_ms = rows["ANF 4 coupling"][0]
        lines.append(
            f"| {name}: ms/step ≤ Pyro coupling flow (4 layers, width 10D) | "
            f"{_fmt(ours)} vs {_fmt(pyro_ms)} | {yes(ours <= pyro_ms)} |"
        )
    return lines


def _best(results, target, guides, key):
    values = [v for g in guides if (v := median_of(results, target, g, key)) is not None]
    return min(values, default=None)


def _headline_checks(results, name, rivals) -> list[str]:
    """Issue 13 on one exact target: KL, k-hat, wall time, and the plain loop's KL."""
    ours = median_of(results, name, "AutoRealNVP", "kl")
    best = _best(results, name, rivals, "kl")
    k_hat = median_of(results, name, "AutoRealNVP", "k_hat")
    lines = [
        f"| {name}: KL ≤ ¼ best other guide | {_fmt(ours)} vs ¼·{_fmt(best)} | "
        f"{yes(ours is not None and best is not None and ours <= best / 4)} |",
        f"| {name}: median k-hat ≤ {HEADLINE_KHAT} | {_fmt(k_hat)} | "
        f"{yes(k_hat is not None and k_hat <= HEADLINE_KHAT)} |",
    ]
    plain = median_of(results, name, PLAIN + "AutoRealNVP", "kl")
    plain_iaf = median_of(results, name, PLAIN + "AutoIAFNormal", "kl")
    if plain is not None and plain_iaf is not None:
        lines.append(
            f"| {name}: plain loop, {PLAIN_PARTICLES} particles: KL ≤ ½ AutoIAFNormal's | "
            f"{_fmt(plain)} vs ½·{_fmt(plain_iaf)} | {yes(plain <= plain_iaf / 2)} |"
        )
    return lines


def _gaussian_floor_check(results, pdb) -> list[str]:
    """Never worse than a Gaussian guide, and stable without redraws (issue 12)."""
    lines = []
    for name in pdb:
        ours = median_of(results, name, "AutoRealNVP", "elbo")
        gauss = [
            median_of(results, name, g, "elbo") for g in ("AutoNormal", "AutoMultivariateNormal")
        ]
        best = max((v for v in gauss if v is not None), default=None)
        met = ours is not None and best is not None and ours >= best - 0.1
        lines.append(
            f"| {name}: ELBO ≥ max(AutoNormal, AutoMultivariateNormal) − 0.1 | "
            f"{_fmt(ours)} vs {_fmt(best)} | {yes(met)} |"
        )
    runs = [r for r in results if r["guide"] == "AutoRealNVP" and r["target"] in pdb]
    failed = sum("error" in r for r in runs)
    redraws = sum(r.get("redraws", 0) for r in runs)
    lines.append(f"| posteriordb: AutoRealNVP fits failed | {failed} | {yes(not failed)} |")
    lines.append(f"| posteriordb: AutoRealNVP redraws | {redraws} | {yes(not redraws)} |")
    return lines


def _particles_prose(particles: int | None) -> str:
    if particles is not None:
        return f"{particles} particle(s) per step for every guide"
    return (
        f"particles as `fit` chooses them: up to {MAX_PARTICLES} on the captured fast path "
        "(fewer where the model's work per particle is large, `pyro_realnvp.infer.fast."
        "particles_for`: garch11 8, diamonds 16), which `fit` takes for AutoRealNVP when "
        "the model allows it (every target here), 1 for the other guides (Pyro's "
        "`Trace_ELBO`)"
    )


def _zuko_prose() -> str:
    if ZUKO_GUIDE not in GUIDES:
        return f"The `{ZUKO_GUIDE}` column is left out: zuko is not installed (`.[bench]`)."
    return (
        f"`{ZUKO_GUIDE}`: `zuko.flows.RealNVP(features=D)` at zuko's defaults (3 couplings, "
        "hidden widths (64, 64), ReLU) wrapped by `pyro.contrib.zuko.ZukoToPyro` in an "
        "`AutoContinuous` guide, as Pyro's flow tutorial builds it (zuko "
        f"{version('zuko')})."
    )


def render(
    results: list[dict], timing: dict, args: argparse.Namespace, seconds: float, env: list[str]
) -> str:
    exact = [t for t in args.exact if any(r["target"] == t for r in results)]
    pdb = [t for t in args.posteriordb if any(r["target"] == t for r in results)]
    examples = [t for t in args.examples if any(r["target"] == t for r in results)]
    guides = [g for g in GUIDES if any(r["guide"] == g for r in results)]
    more = sorted({r["guide"] for r in results if r["target"] in exact and " ×" in r["guide"]})
    plain = [PLAIN + g for g in PLAIN_GUIDES if any(r["guide"] == PLAIN + g for r in results)]
    command = "python -m benchmarks.accuracy " + shlex.join(args.argv)
    out = [
        "# Benchmarks: AutoRealNVP beside Pyro's guides",
        "",
        "Produced by one command; every number below is as it printed. Do not edit by hand.",
        "",
        "```",
        command,
        "```",
        "",
        f"- Finished {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{seconds / 60:.1f} min wall"
        + (" for the timing and the figure" if args.from_results else "")
        + f" on {args.workers} worker process(es), one torch thread each",
        *env,
        "",
        "## What was run",
        "",
        f"- Exact-truth targets: {', '.join(exact) or 'none'}"
        + (f"; {args.steps} steps, seeds {args.seeds}" if exact else "")
        + f". posteriordb targets: {', '.join(pdb) or 'none'}; {args.pdb_steps} steps, "
        f"seeds {args.pdb_seeds}.",
        "- Every guide: `pyro_realnvp.fit` at its defaults (AutoRealNVP: Adam, lr "
        f"{FLOW_LRS['fast']:g} on the fast path and {FLOW_LRS['svi']:g} on Pyro's ELBO, "
        f"decayed {1 / FLOW_LR_DECAY:g}-fold by the last step, the gradients' total norm "
        f"clipped at {CLIP_NORMS['svi']:g} on Pyro's ELBO, at {CLIP_NORMS['fast']:g} on the "
        "fast path, ending at the iterates' moving average; any other guide: Adam at a "
        f"constant lr {LR:g}, unclipped, its last iterate, as in Pyro's own loop), "
        + _particles_prose(args.particles)
        + ", guide defaults. ANF = `AutoNormalizingFlow`: `partial(iterated, 4, affine_coupling)` "
        "as Pyro documents it, and `+perm` with a reversal `Permute` between the layers. "
        + _zuko_prose(),
        f"- Metrics from {args.draws} guide draws (fewer where the reference has fewer): "
        "ELBO and KL(q‖p) = log Z − ELBO from the same importance weights; k-hat: the median"
        f" of `pyro.infer.importance.psis_diagnostic` over {KHAT_SETS} sets of {args.draws} "
        "fresh draws each; moments "
        "against the analytic (exact targets) or all reference draws (posteriordb) in the "
        "constrained space of the reference's columns; sliced W1 (256 projections) on "
        "columns standardised by the reference sd, against the first 2000 draws of one "
        "exact set (or of the first half of the posteriordb chains): the median over "
        f"{W1_SETS} fresh sets of guide draws ({RESAMPLED_SETS} resampled sets), since one "
        "set's W1 spreads about as widely as an exact sampler's; the floor beside it is the "
        f"median over {W1_SETS} random subsets of as many draws of a second exact set of "
        f"{REFERENCE_SET} (or the second half of the chains) against the same first draws.",
        "- Cells: median [min, max] over seeds; 'failed' counts fits stopped by a "
        "non-finite loss (`NonFiniteLossError`).",
        "",
    ]
    floor = {
        name: statistics.median(floor_sets(get_target(name, args.draws), args.draws))
        for name in exact + pdb
    }
    every = exact + pdb + examples
    tables = [
        ("KL(q‖p), nats (log Z exact) · training wall time", exact, _kl_and_wall),
        ("ELBO", every, _metric("elbo")),
        ("PSIS k-hat", every, _metric("k_hat")),
        ("max |mean error| / reference sd", exact + pdb, _metric("mean_error")),
        ("sd / reference sd, min–max over coordinates", exact + pdb, _sd_range),
        (
            f"Time to KL ≤ {KL_THRESHOLD} nats (moving average of {KL_WINDOW} training "
            "losses + log Z; seconds, steps, seeds that reached it)",
            exact,
            _time_to_kl_cell,
        ),
        ("Training wall time, s (parallel workers: indicative)", every, _metric("wall_s")),
        ("Redraws: steps `fit` redrew after a non-finite loss", every, _redraws_cell),
    ]
    for title, targets, cell in tables:
        out += [f"## {title}", "", *_table(results, targets, guides, cell), ""]
    w1_lines = _table(results, exact + pdb, guides, _metric("w1"))
    w1_lines[0] += " noise floor |"
    w1_lines[1] += "---|"
    for index, name in enumerate(exact + pdb):
        w1_lines[index + 2] += f" {_fmt(floor[name])} |"
    out += ["## Sliced W1 to the truth (standardised units)", "", *w1_lines, ""]
    if more:
        out += [
            "## Exact targets: the rivals at more particles per step",
            "",
            "Pyro's and zuko's guides through `fit` with that many vectorized particles per "
            "step (their better setting), KL(q‖p) · training wall time; AutoRealNVP as above.",
            "",
            *_table(results, exact, ["AutoRealNVP", *more], _kl_and_wall),
            "",
            *_table(results, exact, ["AutoRealNVP", *more], _metric("k_hat")),
            "",
        ]
    if plain:
        out += [
            f"## Pyro's plain SVI loop, {PLAIN_PARTICLES} vectorized particles",
            "",
            "`SVI(model, guide, ClippedAdam({'lr': 1e-2, 'lrd': ...}), Trace_ELBO("
            f"num_particles={PLAIN_PARTICLES}, vectorize_particles=True))`, lr decayed to "
            f"1e-3, {args.steps} steps, seeds {args.plain_seeds}: the guide as users train "
            "it themselves (AutoRealNVP's path gradient applies there too). KL · wall time; "
            "PSIS k-hat.",
            "",
            *_table(results, [t for t in HEADLINE if t in exact], plain, _kl_and_wall),
            "",
            *_table(results, [t for t in HEADLINE if t in exact], plain, _metric("k_hat")),
            "",
        ]
    out += [
        "## Time per step, interleaved in one process (ms; ratio to AutoNormal)",
        "",
        f"The step `fit` runs for each guide at its defaults, built once; {args.timing_rounds} "
        f"rounds of {args.timing_steps} steps per guide, guides in rotating order, median "
        "over rounds. Below it, each guide's one-off set-up in seconds (AutoRealNVP: the "
        "Laplace start and the fast path's capture; the others: their first 5 steps).",
        "",
    ]
    if timing:
        names = list(next(iter(timing.values())))
        out += ["| target | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for target, rows in timing.items():
            cells = [f"{_fmt(rows[n][0])} ({_fmt(rows[n][1], 2)}×)" for n in names]
            out.append(f"| {target} | " + " | ".join(cells) + " |")
        out += ["", "| set-up, s | " + " | ".join(names) + " |"]
        out.append("|---" * (len(names) + 1) + "|")
        for target, rows in timing.items():
            out.append(f"| {target} | " + " | ".join(_fmt(rows[n][2], 2) for n in names) + " |")
        out.append("")
    out += posteriordb_sections(results, pdb, floor, _fmt)
    out += examples_section(results, examples, _fmt)
    out += ["## The issue's targets for AutoRealNVP", ""]
    out += [*_targets_check(results, exact, pdb, timing), ""]
    return "\n".join(out)


def readme_funnel(readme: Path, num_steps: int) -> str:
    """Redraw the README's funnel figure with ``examples/funnel.py`` (seed 0) and write its
    caption, with the figures that run printed, between the README's caption markers."""
    root = Path(__file__).resolve().parents[1]
    pyro.clear_param_store()  # the example names its guides as the timing's guides are named
    example = runpy.run_path(str(root / "examples" / "funnel.py"), run_name="funnel_example")
    options = ["--num-steps", str(num_steps), "--out-dir", str(root / "docs" / "img")]
    rows = example["main"](example["parse_args"]([*options, "--no-progress"]))
    normal, ours = rows["AutoNormal"], rows["AutoRealNVP"]
    caption = (
        f"*Neal's funnel in 10 dimensions, {num_steps} steps of `fit` each at its defaults, "
        "over exact draws in grey: `AutoNormal` sits in the neck (sd of v "
        f"{normal['sd(v) (true 3.0)']:.2f}, true 3.0; KL(q||p) {normal['KL(q||p)']:.2f}, "
        f"k-hat {normal['PSIS k-hat']:.2f}), `AutoRealNVP` follows the funnel into its mouth "
        f"and down its neck (sd of v {ours['sd(v) (true 3.0)']:.2f}; KL "
        f"{ours['KL(q||p)']:.2f}, k-hat {ours['PSIS k-hat']:.2f}). Drawn by `make bench`; "
        "alone: `python examples/funnel.py --out-dir docs/img`.*"
    )
    text = readme.read_text()
    start, end = (
        "<!-- funnel caption: written by `make bench` -->\n",
        "\n<!-- end funnel caption -->",
    )
    head, rest = text.split(start, 1)
    readme.write_text(head + start + caption + end + rest.split(end, 1)[1])
    return caption


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few steps of everything")
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown here")
    parser.add_argument("--results", type=Path, default=None, help="also write JSON lines")
    parser.add_argument("--steps", type=int, default=NUM_STEPS)
    parser.add_argument("--pdb-steps", type=int, default=NUM_STEPS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--pdb-seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--particles", type=int, default=None, help="for every guide (default: fit's own)"
    )
    parser.add_argument("--plain-seeds", type=int, nargs="*", default=[])
    parser.add_argument(
        "--tail-fraction", type=float, default=None, help="AutoRealNVP's fit (default: fit's)"
    )
    parser.add_argument("--readme", type=Path, default=None, help="redraw its funnel figure")
    parser.add_argument(
        "--from-results",
        type=Path,
        default=None,
        help="read the fits' results (JSON lines, as printed) instead of running them",
    )
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--exact", nargs="*", default=list(EXACT_TARGETS))
    parser.add_argument(
        "--posteriors", "--posteriordb", dest="posteriordb", nargs="*",
        default=list(POSTERIORDB_TARGETS), help="posteriordb posteriors (default: all)",
    )  # fmt: skip
    parser.add_argument(
        "--examples", nargs="*", default=list(PYRO_EXAMPLES),
        help="models of Pyro's examples (no reference: ELBO and k-hat only)",
    )  # fmt: skip
    parser.add_argument(
        "--rival-particles", nargs="*", default=["matched"],
        help="posteriordb: the rivals' extra particle counts ('matched': AutoRealNVP's)",
    )  # fmt: skip
    parser.add_argument("--exact-rival-particles", nargs="*", default=["8"])
    parser.add_argument("--user-loop-guides", nargs="*", default=list(USER_LOOP_GUIDES))
    parser.add_argument(
        "--user-loop-targets", nargs="*", default=list(USER_LOOP_TARGETS),
        help="posteriors and examples also trained in Pyro's loop as users write it",
    )  # fmt: skip
    parser.add_argument(
        "--guides", nargs="+", default=[g for g in DEFAULT_GUIDES if g in GUIDES],
        help="the guides at 1 particle",
    )  # fmt: skip
    parser.add_argument("--timing-steps", type=int, default=40)
    parser.add_argument("--timing-rounds", type=int, default=5)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.posteriordb) - set(POSTERIORDB_TARGETS))
    unknown += sorted(set(args.exact) - set(EXACT_TARGETS))
    unknown += sorted(set(args.guides) - set(GUIDES))
    unknown += sorted(set(args.examples) - set(PYRO_EXAMPLES))
    if unknown:
        parser.error(f"unknown target(s) or guide(s) {unknown}")
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.smoke:
        args.steps = args.pdb_steps = 10
        args.seeds, args.pdb_seeds, args.plain_seeds = [0], [0], [0]
        args.draws, args.workers = 64, 1
        args.timing_steps, args.timing_rounds = 2, 2
    return args


def particle_label(guide: str, particles: str) -> str:
    """A rival's column at more particles: ``"AutoNormal ×8"``, ``"AutoNormal ×ours"``
    (as many as ``fit`` gives AutoRealNVP on that target)."""
    return f"{guide} ×{'ours' if particles == 'matched' else particles}"


def _rival_jobs(targets, seeds, steps, particle_counts, common) -> list[dict]:
    return [
        {"target": t, "seed": s, "guide": particle_label(g, p), "base": g, "steps": steps,
         **common, "particles": p if p == "matched" else int(p)}
        for t in targets
        for s in seeds
        for g in PARTICLE_RIVALS
        for p in particle_counts
    ]  # fmt: skip


def _jobs(args: argparse.Namespace) -> list[dict]:
    common = {"particles": args.particles, "draws": args.draws,
              "tail_fraction": args.tail_fraction}  # fmt: skip
    jobs = [
        {"target": t, "seed": s, "guide": g, "steps": args.steps, **common}
        for t in args.exact
        for s in args.seeds
        for g in args.guides
    ]
    one_seed = [*args.posteriordb, *args.examples]
    jobs += [
        {"target": t, "seed": s, "guide": g, "steps": args.pdb_steps, **common}
        for t in one_seed
        for s in args.pdb_seeds
        for g in args.guides
    ]
    jobs += _rival_jobs(args.exact, args.seeds, args.steps, args.exact_rival_particles, common)
    jobs += _rival_jobs(one_seed, args.pdb_seeds, args.pdb_steps, args.rival_particles, common)
    jobs += [
        {"target": t, "seed": s, "guide": PLAIN + g, "steps": args.steps, **common}
        for t in HEADLINE
        if t in args.exact
        for s in args.plain_seeds
        for g in PLAIN_GUIDES
    ]
    jobs += [
        {"target": t, "seed": s, "guide": USER_LOOP + g, "steps": args.pdb_steps, **common}
        for t in one_seed
        if t in args.user_loop_targets
        for s in args.pdb_seeds
        for g in args.user_loop_guides
    ]
    # The slowest fits and the largest model first, so the pool's tail is short.
    return sorted(
        jobs,
        key=lambda j: (
            SLOW_TARGETS.index(j["target"]) if j["target"] in SLOW_TARGETS else len(SLOW_TARGETS),
            not j["guide"].endswith(("AutoRealNVP", "×ours")),
        ),
    )


def _read_results(path: Path) -> list[dict]:
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith('{"target"')]


def _partial(results: Path) -> Path:
    """Where a run writes its results until it has finished: a run stopped before then
    leaves the results of the last whole run (behind the published page) as they were."""
    return results.with_name(results.name + ".partial")


def _run_jobs(args: argparse.Namespace) -> list[dict]:
    results = []
    if args.results is not None:
        args.results.parent.mkdir(parents=True, exist_ok=True)
    log = None if args.results is None else _partial(args.results).open("w")
    jobs = _jobs(args)
    if args.workers > 1:
        with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
            for result in pool.imap_unordered(run_job, jobs):
                results.append(result)
                print(json.dumps(result), flush=True)
                if log is not None:
                    print(json.dumps(result), file=log, flush=True)
    else:
        for job in jobs:
            results.append(run_job(job))
            print(json.dumps(results[-1]), flush=True)
            if log is not None:
                print(json.dumps(results[-1]), file=log, flush=True)
    if log is not None:
        log.close()
    return results


def main(args: argparse.Namespace) -> str:
    torch.set_num_threads(1)
    start = time.perf_counter()
    if ZUKO_GUIDE not in GUIDES:
        print(f"zuko is not installed: the {ZUKO_GUIDE!r} column is left out", file=sys.stderr)
    env = environment_lines()  # the commit the run started from
    if args.from_results is not None:
        results = _read_results(args.from_results)
        env.append(f"- fits read from {args.from_results.name} (an earlier run of the same jobs)")
    else:
        results = _run_jobs(args)
    timing = {
        name: interleaved_timing(name, args.timing_steps, args.timing_rounds, args.draws)
        for name in TIMING_TARGETS
        if name in args.exact
    }
    caption = None if args.readme is None else readme_funnel(args.readme, args.steps)
    text = render(results, timing, args, time.perf_counter() - start, env)
    if caption is not None:
        text += f"\n## The README's figure, from this run\n\n{caption}\n"
    print(text)
    if args.results is not None:
        written = args.results if args.from_results is not None else _partial(args.results)
        with written.open("a") as log:
            print(json.dumps({"timing": timing}), file=log, flush=True)
        written.replace(args.results)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return text


if __name__ == "__main__":
    main(parse_args())
