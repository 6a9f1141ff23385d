import pytest
import torch

from pyro_realnvp._internal.flat import FlatParameters, unpacked


def make_params(seed=0):
    generator = torch.Generator().manual_seed(seed)
    shapes = [(3, 4), (4,), (2, 2, 2)]
    return [torch.randn(shape, generator=generator).requires_grad_() for shape in shapes]


def loss_of(params):
    return sum((p.sin() * (i + 1)).sum() for i, p in enumerate(params))


def adam_steps(params, optimized, zero_grad, steps=5):
    optimizer = torch.optim.Adam(optimized, lr=0.1, fused=True)
    for _ in range(steps):
        zero_grad(optimizer)
        loss_of(params).backward()
        optimizer.step()
    return optimizer


def test_adam_on_the_flat_buffer_updates_as_on_the_separate_tensors():
    separate, shared = make_params(), make_params()
    adam_steps(separate, separate, lambda opt: opt.zero_grad(set_to_none=True))
    flat = FlatParameters(shared)
    flat.bind()
    adam_steps(shared, [flat.flat], lambda opt: flat.zero_grad())
    for a, b in zip(separate, shared, strict=True):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)
        assert torch.allclose(a.grad, b.grad)


def test_release_gives_back_separate_storage_with_the_values_and_keeps_adam_state():
    params = make_params()
    flat = FlatParameters(params)
    flat.bind()
    storage = flat.flat.untyped_storage().data_ptr()
    assert all(p.untyped_storage().data_ptr() == storage for p in params)
    optimizer = adam_steps(params, [flat.flat], lambda opt: flat.zero_grad(), steps=2)
    values = [p.detach().clone() for p in params]
    flat.release()
    assert all(p.untyped_storage().data_ptr() != storage for p in params)
    assert all(p.grad is None for p in params)
    assert all(torch.equal(p, v) for p, v in zip(params, values, strict=True))
    with torch.no_grad():
        params[0].add_(1.0)  # a change between loops is what the next bind starts from
    flat.bind()
    assert torch.equal(flat.flat[:12], (values[0] + 1.0).reshape(-1))
    assert optimizer.state[flat.flat]["step"] == 2


def test_mixed_dtypes_and_non_leaves_are_refused():
    with pytest.raises(ValueError, match="one dtype and device"):
        FlatParameters([torch.zeros(2, requires_grad=True),
                        torch.zeros(2, dtype=torch.float64, requires_grad=True)])  # fmt: skip
    with pytest.raises(ValueError, match="leaf"):
        FlatParameters([torch.zeros(2, requires_grad=True) * 2])
    with pytest.raises(ValueError, match="at least one"):
        FlatParameters([])


def test_gradients_cleared_elsewhere_are_bound_again_at_the_next_zero_grad():
    separate, shared = make_params(), make_params()
    adam_steps(separate, separate, lambda opt: opt.zero_grad(set_to_none=True), steps=4)
    flat = FlatParameters(shared)
    flat.bind()

    def zero_grad(optimizer):
        shared[1].grad = None  # as module.zero_grad() would, between steps
        flat.zero_grad()

    adam_steps(shared, [flat.flat], zero_grad, steps=4)
    for a, b in zip(separate, shared, strict=True):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)
    assert flat.intact()


def test_a_replaced_flat_gradient_is_what_the_parameters_read():
    params = make_params()
    flat = FlatParameters(params)
    flat.bind()
    loss_of(params).backward()
    flat.flat.grad = torch.zeros_like(flat.flat)  # as Pyro's zero_grads does after a step
    flat.sync_grads()
    loss_of(params).backward()
    expected = make_params()
    loss_of(expected).backward()
    for param, reference in zip(params, expected, strict=True):
        assert torch.allclose(param.grad, reference.grad)
    assert torch.equal(flat.flat.grad, torch.cat([p.grad.reshape(-1) for p in params]))


def test_gradients_set_elsewhere_keep_their_values_and_cleared_ones_read_as_zero():
    params = make_params()
    flat = FlatParameters(params)
    flat.bind()
    loss_of(params).backward()
    params[0].grad = None  # module.zero_grad() on part of them
    params[1].grad = torch.full((4,), 7.0)
    flat.sync_grads()
    assert torch.equal(params[0].grad, torch.zeros(3, 4))
    assert torch.equal(flat.flat.grad[12:16], torch.full((4,), 7.0))
    assert all(p.grad.data_ptr() != 0 and p.grad._base is flat.flat.grad for p in params)
    flat.flat.grad = None  # an optimizer's zero_grad(set_to_none=True) over [flat]
    flat.sync_grads()
    assert torch.equal(flat.flat.grad, torch.zeros(flat.flat.numel()))
    assert all(p.grad._base is flat.flat.grad for p in params)


def test_refresh_binds_again_from_a_parameter_moved_elsewhere():
    params = make_params()
    flat = FlatParameters(params)
    flat.bind()
    params[2].data = params[2].data.clone() + 1.0  # as module.to() or another binding does
    expected = params[2].detach().clone()
    flat.refresh()
    assert params[2].untyped_storage().data_ptr() == flat.flat.untyped_storage().data_ptr()
    assert torch.equal(flat.flat[-8:], expected.reshape(-1))


def test_release_gives_a_parameter_back_its_first_storage_with_the_new_values():
    outer = make_params()
    first = FlatParameters(outer)
    first.bind()
    second = FlatParameters(outer)  # the fast path binding what the guide already bound
    second.bind()
    with torch.no_grad():
        second.flat.add_(1.0)
    second.release()
    assert all(p.untyped_storage().data_ptr() == first.flat.untyped_storage().data_ptr()
               for p in outer)  # fmt: skip
    assert torch.equal(first.flat, second.flat)


def test_unpacked_stands_a_flat_tensor_for_the_parameters_that_are_its_views():
    params, other = make_params(), torch.zeros(2, requires_grad=True)
    flat = FlatParameters(params)
    assert list(unpacked([flat.flat], params)) == [flat.flat]  # not bound: itself
    flat.bind()
    assert [id(t) for t in unpacked([flat.flat, other], params)] == [
        id(p) for p in [*params, other]
    ]
    # Another set of views of the same tensor (a same-named copy's flow) is not these.
    assert [id(t) for t in unpacked([flat.flat], params[:1])] == [id(params[0])]


def test_tracked_gradients_fill_flat_whatever_replaced_them_before_the_backward_pass():
    params = make_params()
    flat = FlatParameters(params, give_back=False)
    flat.bind(grads=False)
    flat.track_grads()
    expected = make_params()
    loss_of(expected).backward()
    reference = torch.cat([p.grad.reshape(-1) for p in expected])
    # Pyro's zero_grads, then the order loss, zero_grad, backward: each time one gradient.
    for clear in (lambda: setattr(flat.flat, "grad", torch.zeros_like(flat.flat)),
                  lambda: setattr(flat.flat, "grad", None),
                  lambda: [setattr(p, "grad", None) for p in params]):  # fmt: skip
        loss = loss_of(params)
        clear()
        loss.backward()
        assert torch.allclose(flat.flat.grad, reference)
        assert torch.equal(torch.cat([p.grad.reshape(-1) for p in params]), flat.flat.grad)
    # A pass that does not accumulate (autograd.grad) leaves a cleared gradient None.
    for param in params:
        param.grad = None
    torch.autograd.grad(loss_of(params), params)
    assert all(p.grad is None for p in params)
    flat.untrack()
    before = flat.flat.grad.clone()
    loss_of(params).backward()  # untracked: the parameters' own gradients, flat's untouched
    assert torch.equal(flat.flat.grad, before)


def watched_loss(params, flat):
    """``loss_of`` reached through one watched tensor, as a guide's draw is."""
    through = torch.stack([p.sum() for p in params])
    flat.watch(through)
    return (through.sin() * torch.arange(1.0, len(params) + 1)).sum()


def test_watched_gradients_fill_flat_whatever_replaced_them_before_the_backward_pass():
    params = make_params()
    flat = FlatParameters(params, give_back=False)
    flat.bind(grads=False)
    expected = make_params()
    watched_loss(expected, FlatParameters(expected)).backward()  # unbound: plain gradients
    reference = torch.cat([p.grad.reshape(-1) for p in expected])
    for clear in (lambda: setattr(flat.flat, "grad", torch.zeros_like(flat.flat)),
                  lambda: setattr(flat.flat, "grad", None),
                  lambda: [setattr(p, "grad", None) for p in params],
                  lambda: None):  # fmt: skip
        loss = watched_loss(params, flat)
        clear()
        loss.backward()
        assert torch.allclose(flat.flat.grad, reference)
        assert torch.equal(torch.cat([p.grad.reshape(-1) for p in params]), flat.flat.grad)
        flat.flat.grad = torch.zeros_like(flat.flat)  # as Pyro's zero_grads, after the step
    # create_graph: torch accumulates out of place, and flat still sees the sum.
    watched_loss(params, flat).backward(create_graph=True)
    assert torch.allclose(flat.flat.grad.detach(), reference)
    # A pass that does not accumulate (autograd.grad) leaves a cleared gradient None, and
    # one that does not run through the watched tensor is not synced.
    for param in params:
        param.grad = None
    torch.autograd.grad(watched_loss(params, flat), params)
    assert all(p.grad is None for p in params)
    assert not flat.tracking()
