import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import poisonable_model
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal, init_to_median
from pyro.optim import Adam

from pyro_realnvp import AutoRealNVP, FastPathError, NonFiniteLossError, fit
from pyro_realnvp.infer import MAX_PARTICLES, fit_step
from pyro_realnvp.infer import fast as fast_module
from pyro_realnvp.infer import loop as train_module
from pyro_realnvp.infer import svi_step as svi_step_module

SMALL = {"num_layers": 2, "hidden_dims": (8,)}


def test_fit_returns_history_and_decreases_loss():
    def model():
        pyro.sample("x", dist.Normal(5.0, 0.5))

    # Ten sds from init (a local start): the tail-adaptive weights, which favour the
    # particles nearest p, take longer than plain reverse KL to get there (0.33 off at
    # 400 steps against 0.065; both within 0.03 at 1000).
    guide = AutoRealNVP(model, init_loc_fn=lambda site: torch.tensor(0.0), **SMALL)
    losses = torch.tensor(fit(model, guide, num_steps=1000, lr=0.05, progress=False))
    assert losses.shape == (1000,)
    assert losses[-50:].mean() < losses[:50].mean() - 1
    assert abs(guide.median()["x"] - 5.0) < 0.1


def test_rare_non_finite_draws_are_redrawn_with_a_warning():
    state = {"calls": 0}

    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        state["calls"] += 1
        shift = float("inf") if state["calls"] % 7 == 3 else 0.0
        pyro.sample("y", dist.Normal(x + shift, 1.0), obs=torch.tensor(1.0))

    guide = AutoRealNVP(model, **SMALL)
    with pytest.warns(UserWarning, match="redrawn after a non-finite loss"):
        losses = fit(model, guide, num_steps=30, progress=False, fast=False)
    assert len(losses) == 30
    assert all(math.isfinite(loss) for loss in losses)


def test_persistent_non_finite_loss_raises_after_the_redraws():
    model = poisonable_model({"poison": True})
    guide = AutoRealNVP(model, **SMALL)
    with pytest.raises(NonFiniteLossError, match="over 3 fresh draws"):
        fit(model, guide, num_steps=5, max_redraws=2, progress=False)


def test_fit_rejects_zero_steps():
    with pytest.raises(ValueError, match="num_steps"):
        fit(lambda: None, lambda: None, num_steps=0)


BAD_ARGUMENTS = [
    ("lr", float("nan")),
    ("lr", -0.01),
    ("lr", 0.0),
    ("num_particles", 0),
    ("num_particles", 2.5),
    ("num_steps", 0),
    ("lr_decay", -1.0),
    ("lr_decay", 0.0),
    ("lr_decay", 2.0),
    ("clip_norm", 0.0),
    ("clip_norm", float("nan")),
    ("max_redraws", -1),
]


@pytest.mark.parametrize(
    ("name", "value"), BAD_ARGUMENTS, ids=[f"{n}={v}" for n, v in BAD_ARGUMENTS]
)
def test_fit_refuses_an_argument_out_of_range_before_any_step(name, value):
    def model():
        pyro.sample("x", dist.Normal(0.0, 1.0))

    guide = AutoNormal(model)
    wrong_type = isinstance(value, float) and name in ("num_particles", "num_steps")
    with pytest.raises(TypeError if wrong_type else ValueError, match=rf"^{name} must be"):
        fit(model, guide, progress=False, **{"num_steps": 5, name: value})
    assert len(pyro.get_param_store()) == 0  # no step ran: the guide was never set up


def regression(rows=50, subsample_size=None):
    data = torch.randn(rows, 2)

    def model():
        w = pyro.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        with pyro.plate("rows", rows, subsample_size=subsample_size) as index:
            x = data[index]
            pyro.sample("y", dist.Normal((x * w).sum(-1), 1.0), obs=x.sum(-1))

    return model


def test_fit_takes_the_fast_path_for_an_autorealnvp_when_the_model_allows(caplog):
    model = regression()
    with caplog.at_level("INFO", logger="pyro_realnvp.infer"):
        history = fit(model, AutoRealNVP(model, **SMALL), num_steps=5, progress=False)
    assert (history.method, history.note) == ("fast", "")
    assert not [r for r in caplog.records if r.name == "pyro_realnvp.infer"]
    other = fit(model, AutoNormal(model), num_steps=5, progress=False)
    assert (other.method, other.note) == ("svi", "")


@pytest.mark.parametrize(("guide", "asked", "told"), [
    ("AutoRealNVP", 3, 3), ("AutoRealNVP", None, "chosen"), ("AutoNormal", None, 1),
    ("AutoNormal", 4, 4),
])  # fmt: skip
def test_fits_history_says_how_many_particles_each_step_drew(guide, asked, told):
    model = regression()
    built = AutoRealNVP(model, **SMALL) if guide == "AutoRealNVP" else AutoNormal(model)
    history = fit(model, built, num_steps=2, num_particles=asked, progress=False)
    if told == "chosen":  # the fast path's own choice, up to its cap
        assert 1 <= history.num_particles <= MAX_PARTICLES
    else:
        assert history.num_particles == told


def test_fit_falls_back_to_pyro_saying_why_once(caplog):
    model = regression(subsample_size=10)
    with caplog.at_level("INFO", logger="pyro_realnvp.infer"):
        history = fit(model, AutoRealNVP(model, **SMALL), num_steps=5, progress=False)
    assert history.method == "svi"
    assert "subsampling plate 'rows'" in history.note
    said = [r.getMessage() for r in caplog.records if r.name == "pyro_realnvp.infer"]
    assert said == [f"fit: {history.note}"]
    with pytest.raises(FastPathError, match="subsampling plate 'rows'"):
        fit(model, AutoRealNVP(model, **SMALL), num_steps=5, progress=False, fast=True)
    with pytest.raises(FastPathError, match="needs an AutoRealNVP"):
        fit(model, AutoNormal(model), num_steps=5, progress=False, fast=True)


@pytest.mark.parametrize(
    ("clip_norm", "fast", "applied"),
    [(None, True, 100.0), (None, False, 10.0), (3.0, True, 3.0), (3.0, False, 3.0)],
    ids=["default-fast", "default-pyro", "given-fast", "given-pyro"],
)  # fmt: skip
def test_fit_clips_pyros_elbo_at_10_and_the_fast_path_at_100(
    monkeypatch, clip_norm, fast, applied
):
    # At 10, the fast path cut the rare particles far in p's tails, which teach q those
    # tails; unclipped, one early spike stalled Adam (docs/tuning.md).
    applied_clips = []
    real = train_module.clip_total_norm

    def spy(params, clip, total_norm=None):
        applied_clips.append(clip)
        return real(params, clip, total_norm)

    monkeypatch.setattr(train_module, "clip_total_norm", spy)
    monkeypatch.setattr(fast_module, "clip_total_norm", spy)
    monkeypatch.setattr(svi_step_module, "clip_total_norm", spy)
    model = regression()
    history = fit(model, AutoRealNVP(model, **SMALL), num_steps=3, progress=False,
                  fast=fast, clip_norm=clip_norm)  # fmt: skip
    assert history.method == ("fast" if fast else "svi")
    assert applied_clips == [applied] * 3


@pytest.mark.parametrize(
    ("guide_class", "lr", "fast", "applied"),
    [(AutoRealNVP, None, True, 0.02), (AutoRealNVP, None, False, 0.01),
     (AutoNormal, None, False, 0.01), (AutoRealNVP, 0.005, True, 0.005),
     (AutoRealNVP, 0.005, False, 0.005)],
    ids=["flow-fast", "flow-pyro", "other-guide", "given-fast", "given-pyro"],
)  # fmt: skip
def test_fits_lr_is_the_paths_own_where_none_is_given(guide_class, lr, fast, applied):
    # 32 particles' gradients take twice the step one particle's can (docs/tuning.md).
    model = regression()
    guide = guide_class(model, **SMALL) if guide_class is AutoRealNVP else guide_class(model)
    step, history = fit_step(model, guide, num_steps=10, lr=lr, fast=fast, average=None)
    assert history.method == ("fast" if fast else "svi")
    step()  # Pyro's ELBO makes its optimizer at the first step, when the params exist
    assert step.optimizer.param_groups[0]["initial_lr"] == pytest.approx(applied)


def test_fast_path_redraws_a_rare_non_finite_step():
    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        # A wall far in the tails: about 1 step in 50 draws a particle past it.
        pyro.factor("wall", torch.where(x.abs() > 3.0, torch.nan, 0.0))

    guide = AutoRealNVP(model, **SMALL)
    with pytest.warns(UserWarning, match="redrawn after a non-finite loss"):
        history = fit(model, guide, num_steps=300, progress=False, lr=1e-3)
    assert history.method == "fast"
    assert history.redraws >= 1
    assert all(math.isfinite(loss) for loss in history)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"guide": None}, TypeError, "^guide must be a callable"),
        ({"model": 3}, TypeError, "^model must be a callable"),
        ({"loss": Trace_ELBO}, TypeError, "^loss must be an ELBO instance"),
        ({"optim": pyro.optim.Adam}, TypeError, "^optim must be a Pyro optimizer"),
    ],
)
def test_fit_refuses_what_it_cannot_call_naming_it(options, error, message):
    model = regression()
    arguments = {"model": model, "guide": AutoNormal(model), **options}
    with pytest.raises(error, match=message):
        fit(arguments.pop("model"), arguments.pop("guide"), num_steps=2, progress=False,
            **arguments)  # fmt: skip


def test_compile_without_the_fast_path_says_what_is_missing():
    model = regression()
    with pytest.raises(FastPathError, match=r"or compile\) needs an AutoRealNVP .*AutoNormal"):
        fit(model, AutoNormal(model), num_steps=2, progress=False, compile=True)


def test_fit_leaves_no_gradient_behind_for_the_next_loop():
    model = regression()
    guide = AutoRealNVP(model, **SMALL)
    fit(model, guide, num_steps=3, progress=False)
    assert all(p.grad is None for p in guide.parameters())


def test_a_frozen_guide_is_refused_on_the_fast_path():
    model = regression()
    guide = AutoRealNVP(model, **SMALL)
    guide()
    guide.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        fit(model, guide, num_steps=2, progress=False, fast=True)


def test_a_model_that_fails_at_every_draw_falls_back_and_raises_non_finite():
    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(torch.sqrt(x - 10.0), 1.0), obs=torch.tensor(0.0))

    guide = AutoRealNVP(model, **SMALL)
    with pytest.raises(NonFiniteLossError, match="rejected the guide's draw") as error:
        fit(model, guide, num_steps=2, progress=False, max_redraws=1)
    assert all(torch.isfinite(p).all() for p in guide.parameters())
    assert error.value.history == []
    # Told to start where the model fails, the guide says so at set-up, naming init_loc_fn.
    with pytest.raises(ValueError, match=r"at site 'y' .* at init_loc_fn's values \(x="):
        fit(model, AutoRealNVP(model, init_loc_fn=init_to_median, **SMALL), num_steps=2)


def intercept_model(y):
    a = pyro.sample("a", dist.Normal(0.0, 100.0))
    s = pyro.sample("s", dist.HalfNormal(10.0))
    with pyro.plate("rows", len(y)):
        pyro.sample("y", dist.Normal(a, s), obs=y)


@pytest.mark.parametrize("guide_class", [AutoNormal, AutoMultivariateNormal])
def test_fit_trains_a_pyro_guide_as_pyros_own_loop_does(guide_class):
    """Not worse than the loop users write: the same steps, to float rounding (a decay, a
    clip at 10 or an iterate average left Gaussian guides short of it, docs/tuning.md)."""
    y = 40.0 + 3.0 * torch.randn(300, generator=torch.Generator().manual_seed(0))
    params = []
    for way in ("fit", "loop"):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = guide_class(intercept_model)
        if way == "fit":
            fit(intercept_model, guide, y, num_steps=300, progress=False)
        else:
            svi = SVI(intercept_model, guide, Adam({"lr": 0.01}), Trace_ELBO())
            for _ in range(300):
                svi.step(y)
        params.append({k: v.detach().clone() for k, v in pyro.get_param_store().items()})
    assert params[0].keys() == params[1].keys()
    for name in params[0]:
        torch.testing.assert_close(params[0][name], params[1][name], rtol=1e-5, atol=1e-5)
