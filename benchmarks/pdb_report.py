"""The posteriordb sections of the benchmark report: AutoRealNVP against each reference
posterior's own noise floor, every rival at its best particle count, the ELBO at equal
particles, ``fit`` against Pyro's loop as users write it, and the counts issue 29 asks for.

Rows are fits of :func:`benchmarks.accuracy.run_job` (one seed per posterior); a rival's
label carries its particles (``"AutoNormal ×8"``, ``"AutoNormal ×ours"``: as many as
``fit`` gave AutoRealNVP), plain labels are ``fit``'s defaults (one particle).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

from pyro_realnvp.diagnostics.khat import KHAT_GOOD, KHAT_OK

__all__ = ["examples_section", "median_of", "posteriordb_sections", "yes"]

OURS = "AutoRealNVP"
#: W1 within this multiple of the reference's own half-vs-half floor counts as at the floor.
FLOOR_RATIO = 1.5


def _runs(results, target, guide) -> list[dict]:
    return [r for r in results if r["target"] == target and r["guide"] == guide]


def median_of(results, target, guide, key):
    """The median of ``key`` over a guide's runs on a target (``None`` where none has it)."""
    values = [r[key] for r in _runs(results, target, guide) if r.get(key) is not None]
    return statistics.median(values) if values else None


def _family(label: str) -> str:
    return label.split(" ×")[0]


def _rival_labels(results, pyro_only: bool) -> list[str]:
    labels = sorted({r["guide"] for r in results if ":" not in r["guide"]})
    rivals = [g for g in labels if _family(g) != OURS]
    return [g for g in rivals if not (pyro_only and _family(g) == "zuko RealNVP")]


def _best(results, target, labels, key, better=min):
    """``(value, label)`` of the best rival run by ``key`` (W1: lowest; ELBO: highest)."""
    pairs = [(v, g) for g in labels if (v := median_of(results, target, g, key)) is not None]
    pairs = [(v, g) for v, g in pairs if math.isfinite(v)]
    return better(pairs, default=(None, None))


def _ours_table(results, pdb, floor, fmt) -> list[str]:
    lines = [
        "| posterior | W1 | W1 resampled | floor | W1/floor | resampled/floor | k-hat | "
        "ESS % | max mean err | sd ratio | ELBO | s | steps | redraws | particles | path |",
        "|---" * 16 + "|",
    ]
    for name in pdb:
        runs = [r for r in _runs(results, name, OURS) if "error" not in r]
        if not runs:
            failed = _runs(results, name, OURS)
            why = failed[0].get("error", "not run") if failed else "not run"
            lines.append(f"| {name} | failed: {why[:80]} |" + " |" * 14)
            continue
        r = runs[0]
        w1r = r.get("w1_resampled")
        ess = r.get("resample_ess")
        proposals = r.get("resample_proposals")
        path = r.get("path", "?") + (f" ({r['note'][:60]}…)" if r.get("note") else "")
        cells = [
            fmt(r["w1"]), fmt(w1r), fmt(floor[name]), fmt(r["w1"] / floor[name], 2),
            "—" if w1r is None else fmt(w1r / floor[name], 2), fmt(r["k_hat"], 2),
            "—" if ess is None or not proposals else fmt(100 * ess / proposals, 2),
            fmt(r["mean_error"], 2), f"{fmt(r['sd_low'], 2)}–{fmt(r['sd_high'], 2)}",
            fmt(r["elbo"]), fmt(r["wall_s"], 2), str(r.get("steps_run", "?")),
            str(r.get("redraws", 0)),
            str(r.get("num_particles", "?")), path,
        ]  # fmt: skip
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _best_w1_table(results, pdb, floor, fmt) -> list[str]:
    families = sorted({_family(g) for g in _rival_labels(results, False)})
    lines = ["| posterior | AutoRealNVP | " + " | ".join(families) + " | floor |",
             "|---" * (len(families) + 3) + "|"]  # fmt: skip
    for name in pdb:
        cells = [fmt(median_of(results, name, OURS, "w1"))]
        for family in families:
            labels = [g for g in _rival_labels(results, False) if _family(g) == family]
            value, label = _best(results, name, labels, "w1")
            suffix = label.removeprefix(family).strip() if label else ""
            cells.append(fmt(value) + (f" ({suffix or '×1'})" if value is not None else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {fmt(floor[name])} |")
    return lines


def _equal_particles_table(results, pdb, fmt) -> list[str]:
    matched = [g for g in _rival_labels(results, False) if g.endswith("×ours")]
    if not matched:
        return ["Not run here: no rival was trained at AutoRealNVP's particle count "
                "(`--rival-particles matched`)."]  # fmt: skip
    lines = ["| posterior | AutoRealNVP (particles) | " + " | ".join(matched) + " | met |",
             "|---" * (len(matched) + 3) + "|"]  # fmt: skip
    for name in pdb:
        ours = median_of(results, name, OURS, "elbo")
        particles = median_of(results, name, OURS, "num_particles")
        values = [median_of(results, name, g, "elbo") for g in matched]
        met = ours is not None and all(v is None or ours >= v - _noise(results, name, g)
                                       for v, g in zip(values, matched, strict=True))  # fmt: skip
        cells = [f"{fmt(ours)} ({particles})", *(fmt(v) for v in values), yes(met)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _noise(results, target, other) -> float:
    """Two standard errors of the difference of two ELBO estimates (2000 draws each)."""
    ses = [median_of(results, target, g, "elbo_se") or 0.0 for g in (OURS, other)]
    return 2 * math.hypot(*ses)


def _user_loop_table(results, pdb, fmt) -> list[str]:
    guides = sorted({r["guide"].split(": ", 1)[1] for r in results
                     if r["guide"].startswith("user loop: ")})  # fmt: skip
    if not guides:
        return [
            "Not run here (`--user-loop-guides`). For Pyro's guides `fit` makes the same "
            "updates as that loop, to float rounding "
            "(`tests/infer/test_svi.py::test_fit_trains_a_pyro_guide_as_pyros_own_loop_does`)."
        ]
    lines = ["| posterior | " + " | ".join(f"{g}: fit / loop" for g in guides) + " |",
             "|---" * (len(guides) + 1) + "|"]  # fmt: skip
    for name in [n for n in pdb if any(r["target"] == n and r["guide"].startswith(
            "user loop: ") for r in results)]:  # fmt: skip
        cells = []
        for guide in guides:
            ours = median_of(results, name, guide, "elbo")
            loop = median_of(results, name, "user loop: " + guide, "elbo")
            mark = "" if _fit_not_worse(results, name, guide) else " **worse**"
            cells.append(f"{fmt(ours)} / {fmt(loop)}{mark}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _fit_not_worse(results, name, guide) -> bool:
    ours = median_of(results, name, guide, "elbo")
    loop = median_of(results, name, "user loop: " + guide, "elbo")
    if ours is None or loop is None:  # one of the two not run: nothing to compare
        return True
    ses = [median_of(results, name, g, "elbo_se") or 0.0 for g in (guide, "user loop: " + guide)]
    return ours >= loop - 2 * math.hypot(*ses) - 0.01


def _counts_run(results) -> str:
    """The rivals' particle counts in this run: ``"1"``, ``"1, 8, ours"``."""
    counts = sorted({g.split(" ×")[1] for g in _rival_labels(results, False) if " ×" in g})
    single = any(" ×" not in g for g in _rival_labels(results, False))
    return ", ".join(["×1"] * single + [f"×{m}" for m in counts]) or "none"


def yes(met: bool) -> str:
    return "yes" if met else "no"


def _counts(results, pdb, floor) -> list[str]:
    """Issue 29's criteria over the posteriors run, each with its count."""
    pyro_labels = _rival_labels(results, True)
    n = len(pdb)

    def count(test: Callable[[str], bool]) -> int:
        return sum(1 for name in pdb if test(name))

    def ours(name, key):
        return median_of(results, name, OURS, key)

    def w1_best(name):
        value, best = ours(name, "w1"), _best(results, name, pyro_labels, "w1")[0]
        return value is not None and (best is None or value <= best)

    def at_floor(name, key="w1"):
        value = ours(name, key)
        return value is not None and value <= FLOOR_RATIO * floor[name]

    def resampled_at_floor(name):
        khat = ours(name, "k_hat")
        use = "w1_resampled" if khat is not None and khat < KHAT_OK else "w1"
        return at_floor(name, use) or at_floor(name)

    def khat_below(limit):
        return lambda name: (k := ours(name, "k_hat")) is not None and k < limit

    failed = [r["target"] for r in results if r["guide"] == OURS and "error" in r]
    fallback = sorted({r["target"] for r in results if r["guide"] == OURS
                       and r.get("path") not in (None, "fast")})  # fmt: skip
    worse = [f"{name}: {g}" for name in pdb for g in {r["guide"].split(": ", 1)[1]
             for r in results if r["guide"].startswith("user loop: ")}
             if not _fit_not_worse(results, name, g)]  # fmt: skip
    equal = _equal_particles_table(results, pdb, lambda value, digits=3: str(value))[2:]
    ran_equal = any(r["guide"].endswith("×ours") for r in results)
    ran_loop = any(r["guide"].startswith("user loop: ") for r in results)
    counts_run = _counts_run(results)
    return [
        "| criterion | count | target |", "|---|---|---|",
        f"| W1 ≤ best Pyro guide's (particles: {counts_run}) | {count(w1_best)}/{n} | all |",
        f"| W1 ≤ {FLOOR_RATIO}× floor | {count(at_floor)}/{n} | ≥ 33 of 37 |",
        f"| W1 ≤ {FLOOR_RATIO}× floor, resampled where k-hat < {KHAT_OK} | "
        f"{count(resampled_at_floor)}/{n} | ≥ 33 of 37 |",
        f"| k-hat < {KHAT_OK} | {count(khat_below(KHAT_OK))}/{n} | all |",
        f"| k-hat < {KHAT_GOOD} | {count(khat_below(KHAT_GOOD))}/{n} | ≥ 33 of 37 |",
        "| ELBO ≥ every rival's at equal particles | "
        + (f"{sum(line.endswith('| yes |') for line in equal)}/{n}" if ran_equal else "not run")
        + " | ≥ 33 of 37 |",
        f"| failed fits | {len(failed)} {failed or ''} | 0 |",
        f"| fits on Pyro's ELBO, not the fast path | {len(fallback)} {fallback or ''} | 0 |",
        "| guides worse through fit than Pyro's loop | "
        + (f"{len(worse)} {worse or ''}" if ran_loop else "not run")
        + " | 0 |",
    ]  # fmt: skip


def posteriordb_sections(results: list[dict], pdb: list[str], floor: dict, fmt) -> list[str]:
    """The report's posteriordb sections, Markdown lines; ``fmt`` formats a number."""
    if not pdb:
        return []
    # Only these posteriors' fits: the exact targets' rivals at 8 are no column here.
    results = [r for r in results if r["target"] in pdb]
    return [
        "## posteriordb: AutoRealNVP against each reference's own floor", "",
        "W1: sliced W1 of 2000 guide draws to 2000 reference draws (standardised columns); "
        "floor: the same between two disjoint halves of the reference chains. Resampled: "
        "2000 draws importance-resampled from 8000 by PSIS-smoothed weights "
        "(`pyro_realnvp.importance_resample`); ESS %: their effective sample size over the "
        "8000. Path: `fit`'s (`fast`: the captured fast path; `svi`: Pyro's ELBO, and why).",
        "", *_ours_table(results, pdb, floor, fmt), "",
        "## posteriordb: sliced W1 of every guide at its best particle count", "",
        "Each rival's lowest W1 over the particle counts run through `fit` ("
        + _counts_run(results) + "), the winning count in brackets (×ours: as many as "
        "`fit` gave AutoRealNVP). Where a rival's cell is —, its fit failed.", "",
        *_best_w1_table(results, pdb, floor, fmt), "",
        "## posteriordb: ELBO at equal particles", "",
        "Every rival trained by `fit` with as many particles per step as AutoRealNVP had. "
        "Met: AutoRealNVP's ELBO is at least each rival's, within two standard errors of "
        "their difference.", "",
        *_equal_particles_table(results, pdb, fmt), "",
        "## posteriordb: `fit` against Pyro's loop as users write it", "",
        "The same guide and steps in `SVI(model, guide, Adam({'lr': 0.01}), Trace_ELBO())`; "
        "ELBO through `fit` / through that loop; **worse**: below it by more than two "
        "standard errors.", "",
        *_user_loop_table(results, pdb, fmt), "",
        "## posteriordb: issue 29's counts", "",
        *_counts(results, pdb, floor), "",
    ]  # fmt: skip


def examples_section(results: list[dict], examples: list[str], fmt) -> list[str]:
    """The section on Pyro's examples (no reference): ELBO at equal particles and against
    Pyro's loop as users write it, Markdown lines."""
    if not examples:
        return []
    results = [r for r in results if r["target"] in examples]
    return [
        "## Pyro's examples: ELBO at equal particles", "",
        "Models as Pyro's examples write them (`benchmarks/pyro_examples.py`), without a "
        "reference: each rival trained by `fit` with as many particles per step as "
        "AutoRealNVP had; met as above.", "",
        *_equal_particles_table(results, examples, fmt), "",
        "Through `fit` and through Pyro's loop as its tutorials write it (one particle):", "",
        *_user_loop_table(results, examples, fmt), "",
    ]  # fmt: skip
