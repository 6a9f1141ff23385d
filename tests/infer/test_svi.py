import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal, init_to_median

from pyro_realnvp import AutoRealNVP, FastPathError, FiniteELBO, NonFiniteLossError, fit
from pyro_realnvp.infer import fast as fast_module
from pyro_realnvp.infer import loop as train_module
from pyro_realnvp.infer.finite import explain_non_finite

SMALL = {"num_layers": 2, "hidden_dims": (8,)}


def poisonable_model(state):
    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        shift = float("inf") if state["poison"] else 0.0
        pyro.sample("likelihood", dist.Normal(x + shift, 1.0), obs=torch.tensor(1.0))

    return model


def snapshot(guide):
    return {k: v.detach().clone() for k, v in guide.state_dict().items()}


def test_non_finite_model_raises_names_the_site_and_updates_nothing():
    state = {"poison": False}
    model = poisonable_model(state)
    guide = AutoRealNVP(model, **SMALL)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), FiniteELBO())
    for _ in range(5):
        svi.step()
    before = snapshot(guide)
    state["poison"] = True
    with pytest.raises(NonFiniteLossError, match=r"model's log-density .*\['likelihood'\]"):
        svi.step()
    after = snapshot(guide)
    assert all(torch.equal(before[k], after[k]) for k in before)
    # The guide is still usable: the next good step trains from the last finite state.
    state["poison"] = False
    assert math.isfinite(svi.step())
    assert all(torch.isfinite(p).all() for p in guide.parameters())


def test_non_finite_guide_is_blamed_on_the_guide():
    def model():
        pyro.sample("s", dist.LogNormal(0.0, 1.0))

    guide = AutoRealNVP(model, **SMALL)
    guide()
    guide.loc = torch.tensor([1e3])  # as if training had diverged: exp(1000) overflows
    with pytest.raises(NonFiniteLossError, match=r"guide's log-density .*\['s'\]"):
        fit(model, guide, num_steps=1, progress=False)


@pytest.mark.parametrize("fast", [True, False])
def test_finite_loss_with_non_finite_gradient_is_caught(fast):
    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        pyro.factor("kink", torch.sqrt(torch.abs(x) * 0.0))

    guide = AutoRealNVP(model, init_loc_fn=init_to_median, **SMALL)
    with pytest.raises(NonFiniteLossError, match="gradients not") as error:
        fit(model, guide, num_steps=1, progress=False, fast=fast)
    assert error.value.history == []
    assert all(p.grad is None for p in guide.parameters())


def test_finite_elbo_loss_checks_too():
    model = poisonable_model({"poison": True})
    guide = AutoRealNVP(model, **SMALL)
    with pytest.raises(NonFiniteLossError):
        FiniteELBO(Trace_ELBO()).loss(model, guide)


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


def test_draw_that_breaks_model_validation_is_a_non_finite_step():
    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        # exp(-200) underflows to 0 in float32: an invalid scale, as on diamonds.
        pyro.sample("y", dist.Normal(0.0, torch.exp(x - 200.0)), obs=torch.tensor(0.0))

    guide = AutoRealNVP(model, **SMALL)
    with pytest.raises(NonFiniteLossError, match="rejected the guide's draw") as error:
        fit(model, guide, num_steps=2, max_redraws=1, progress=False, fast=False)
    # Pyro's message names no site (the constructor raised before pyro.sample): ours does.
    assert "at site 'y' (test_svi.py:" in str(error.value)
    assert "Expected parameter scale" in str(error.value)
    assert all(torch.isfinite(p).all() for p in guide.parameters())


def test_singular_matrix_at_a_draw_is_a_non_finite_step_that_is_redrawn():
    state = {"calls": 0}

    def model():
        rho = pyro.sample("rho", dist.Normal(0.0, 1.0))
        state["calls"] += 1
        # Every fifth evaluation the "kernel" is singular, as a GP's is at a tail draw.
        off = 2.0 if state["calls"] % 5 == 3 else 0.5
        kernel = torch.tensor([[1.0, off], [off, 1.0]])
        torch.linalg.cholesky(kernel)
        pyro.sample("y", dist.Normal(rho, 1.0), obs=torch.tensor(0.5))

    guide = AutoRealNVP(model, **SMALL)
    with pytest.warns(UserWarning, match="redrawn after a non-finite loss"):
        losses = fit(model, guide, num_steps=20, progress=False, fast=False)
    assert all(math.isfinite(loss) for loss in losses)
    with pytest.raises(NonFiniteLossError, match="linear algebra failed at the guide's draw"):
        FiniteELBO().loss(lambda: model() or torch.linalg.cholesky(-torch.eye(2)), guide)


def test_other_model_errors_are_not_swallowed():
    def model():
        pyro.sample("x", dist.Normal(0.0, 1.0))
        raise ValueError("my model's own bug")

    with pytest.raises(ValueError, match="own bug"):
        fit(model, AutoRealNVP(model, **SMALL), num_steps=1, progress=False)


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
    with pytest.raises(ValueError, match=rf"^{name} must be"):
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
    model = regression()
    history = fit(model, AutoRealNVP(model, **SMALL), num_steps=3, progress=False,
                  fast=fast, clip_norm=clip_norm)  # fmt: skip
    assert history.method == ("fast" if fast else "svi")
    assert applied_clips == [applied] * 3


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


@pytest.mark.parametrize("fast", [True, False])
def test_a_guide_whose_own_draws_overflow_is_not_called_usable(fast):
    def model():
        pyro.sample("s", dist.LogNormal(0.0, 1.0))

    guide = AutoRealNVP(model, init_loc_fn=init_to_median, **SMALL)
    guide()
    guide.loc = torch.tensor([1e3])  # finite parameters, but exp(1000) overflows
    with pytest.raises(NonFiniteLossError) as error:
        fit(model, guide, num_steps=1, progress=False, fast=fast)
    message = str(error.value)
    assert "still usable" not in message
    assert "not usable" in message


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


def test_a_model_that_raises_is_located_after_its_last_site():
    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(torch.sqrt(x - 10.0), 1.0), obs=torch.tensor(0.0))

    guide = AutoNormal(lambda: pyro.sample("x", dist.Normal(0.0, 1.0)))
    guide()
    reason = explain_non_finite(model, guide)
    # The constructor raised before pyro.sample("y", ...) ran: the source line names 'y'.
    assert reason.startswith("the model raised at site 'y' (test_svi.py:")
    assert "after site 'x' (the last sample site it reached), at the guide's draw" in reason


def test_a_model_failing_while_the_guide_sets_up_is_located_too():
    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        pyro.factor("f", x * torch.nan)

    reason = explain_non_finite(model, AutoRealNVP(model, **SMALL))
    assert reason.startswith("the model raised at site 'f'")
    assert "after site 'x' (the last sample site it reached), while the guide set itself up" in (
        reason
    )


def test_a_rejected_draw_names_the_site_and_says_the_error_once():
    data = torch.zeros(5)

    def model():
        v = pyro.sample("v", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(data)):
            pyro.sample("y", dist.Normal(v, 1.0), obs=data)
        pyro.factor("bad", v * torch.nan)

    guide = AutoNormal(model)
    with pytest.raises(NonFiniteLossError) as error:
        fit(model, guide, num_steps=2, progress=False, max_redraws=1)
    message = str(error.value)
    assert message.startswith("the model rejected the guide's draw: the model raised at site")
    assert "at site 'bad' (test_svi.py:" in message
    # The plate's own index site is no sample site of the user's: the last one was 'y'.
    assert "after site 'y' (the last sample site it reached)" in message
    assert message.count("Expected parameter log_factor") == 1
    assert "Trace Shapes" not in message  # Pyro's shape table is too long for a reason
