"""The batched trainer's own convolutions, checked against ``nn.Conv2d``: ``PerClientConv2d``
(the CPU path) and ``UnfoldConv2d`` (unfold + batched matmul, a GPU path).

The reference is PyTorch's own convolution and autograd, one client at a time in a Python loop;
the tested path is ``vmap(grad)`` over stacked weights through each implementation.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from fedwsa.clients import per_client_conv
from fedwsa.clients.per_client_conv import PerClientConv2d, swap_convs, with_per_client_convs
from fedwsa.clients.unfold_conv import UnfoldConv2d
from fedwsa.models import build_model

IMPLS = {"per-client": PerClientConv2d, "unfold": UnfoldConv2d}

GEOMETRIES = [
    dict(kernel_size=5),
    dict(kernel_size=3, stride=2, padding=1, bias=False),
    dict(kernel_size=3, padding=2, dilation=2),
    dict(kernel_size=(3, 1), stride=(1, 2), padding=(1, 0)),
]


def two_layer(geometry: dict, seed: int = 0) -> nn.Sequential:
    """conv -> ReLU -> conv -> sum: the second conv needs its input's gradient, the first not."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, **geometry), nn.ReLU(), nn.Conv2d(4, 5, **geometry))


def stacked(model: nn.Module, clients: int) -> dict[str, torch.Tensor]:
    """Per-client weights: the model's, perturbed differently per client."""
    gen = torch.Generator().manual_seed(1)
    return {n: p.detach() + 0.1 * torch.randn(clients, *p.shape, generator=gen)
            for n, p in model.named_parameters()}


def loss_fn(model: nn.Module):
    def loss(params, x, target):
        return ((functional_call(model, params, (x,)) - target) ** 2).mean()
    return loss


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_unbatched_forward_and_gradients_equal_conv2d(geometry: dict, impl: str) -> None:
    conv = nn.Conv2d(3, 4, **geometry)
    mine = IMPLS[impl](conv)
    x = torch.randn(2, 3, 9, 9, requires_grad=True)
    out_ref = conv(x)
    out = mine(x)
    torch.testing.assert_close(out, out_ref)
    g = torch.randn_like(out)
    want = torch.autograd.grad(out_ref, [x, *conv.parameters()], g)
    got = torch.autograd.grad(out, [x, *mine.parameters()], g)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_vmap_grad_equals_a_loop_of_autograd(geometry: dict, impl: str) -> None:
    """Per-client gradients under vmap(grad) == each client's autograd through nn.Conv2d."""
    K = 4
    model = two_layer(geometry)
    params = stacked(model, K)
    x = torch.randn(K, 3, 3, 11, 11)
    target = torch.randn_like(torch.func.functional_call(model, {n: v[0] for n, v in
                                                                 params.items()}, (x[0],)))
    grads = vmap(grad(loss_fn(swap_convs(model, IMPLS[impl]))), in_dims=(0, 0, None))(
        params, x, target)
    for k in range(K):
        client = two_layer(geometry)
        client.load_state_dict({n: v[k] for n, v in params.items()})
        loss = ((client(x[k]) - target) ** 2).mean()
        want = dict(zip([n for n, _ in client.named_parameters()],
                        torch.autograd.grad(loss, list(client.parameters())), strict=True))
        for name, value in want.items():
            torch.testing.assert_close(grads[name][k], value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_inputs_without_a_client_axis_are_shared(impl: str) -> None:
    """A batch shared by all clients (in_dims None), or weights shared over per-client batches."""
    K = 3
    model = two_layer(GEOMETRIES[0])
    per_client = swap_convs(model, IMPLS[impl])
    params = stacked(model, K)
    x = torch.randn(K, 2, 3, 12, 12)
    target = torch.zeros(2, 5, 4, 4)
    shared_x = vmap(grad(loss_fn(per_client)), in_dims=(0, None, None))(params, x[0], target)
    shared_w = vmap(grad(loss_fn(per_client)), in_dims=(None, 0, None))(
        {n: v[0] for n, v in params.items()}, x, target)
    for k in range(K):
        one = grad(loss_fn(model))({n: v[k] for n, v in params.items()}, x[0], target)
        for name in one:
            torch.testing.assert_close(shared_x[name][k], one[name], rtol=1e-5, atol=1e-6)
        other = grad(loss_fn(model))({n: v[0] for n, v in params.items()}, x[k], target)
        for name in other:
            torch.testing.assert_close(shared_w[name][k], other[name], rtol=1e-5, atol=1e-6)


def test_the_first_layer_computes_no_input_gradient(monkeypatch: pytest.MonkeyPatch) -> None:
    """The data need no gradient: only the second conv asks for its input's (once per client)."""
    asked: list[bool] = []
    original = per_client_conv._Geometry.backward

    def spy(self, grad_out, x, w, want_input):  # type: ignore[no-untyped-def]
        asked.append(want_input)
        return original(self, grad_out, x, w, want_input)

    monkeypatch.setattr(per_client_conv._Geometry, "backward", spy)
    K = 3
    model = two_layer(GEOMETRIES[0])
    x = torch.randn(K, 2, 3, 12, 12)
    vmap(grad(loss_fn(with_per_client_convs(model))), in_dims=(0, 0, None))(
        stacked(model, K), x, torch.zeros(2, 5, 4, 4))
    assert sorted(asked) == [False] * (2 * K) + [True] * K


@pytest.mark.parametrize("impl", IMPLS)
def test_bf16_autocast_gives_fp32_gradients_as_accurate_as_nn_conv2d(impl: str) -> None:
    """bf16 rounds differently in the two conv layouts, so compare both to the fp32 gradient:
    ours must come back fp32 and be about as far from it as autocast through nn.Conv2d is."""
    K = 2
    model = two_layer(GEOMETRIES[0])
    params = stacked(model, K)
    x = torch.randn(K, 4, 3, 12, 12)
    target = torch.zeros(4, 5, 4, 4)

    def autocast_loss(m: nn.Module):
        def loss(p, x, t):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = functional_call(m, p, (x,))
            return ((out.float() - t) ** 2).mean()
        return loss

    dims = (0, 0, None)
    exact = vmap(grad(loss_fn(model)), in_dims=dims)(params, x, target)
    got = vmap(grad(autocast_loss(swap_convs(model, IMPLS[impl]))), in_dims=dims)(params, x,
                                                                                 target)
    want = vmap(grad(autocast_loss(model)), in_dims=dims)(params, x, target)
    for name, value in exact.items():
        assert got[name].dtype == torch.float32
        ours = float((got[name] - value).norm() / value.norm())
        theirs = float((want[name] - value).norm() / value.norm())
        assert ours < max(2 * theirs, 0.01), (name, ours, theirs)


@pytest.mark.parametrize("impl", IMPLS)
def test_the_swap_keeps_names_and_leaves_the_original_and_unsupported_convs_alone(
        impl: str) -> None:
    model = build_model("resnet18", 10, seed=0)
    mine = IMPLS[impl]
    swapped = swap_convs(model, mine)
    assert [n for n, _ in swapped.named_parameters()] == [n for n, _ in model.named_parameters()]
    assert not any(isinstance(m, mine) for m in model.modules())
    convs = [m for m in swapped.modules() if isinstance(m, nn.Conv2d | mine)]
    assert convs and all(isinstance(m, mine) for m in convs)

    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Conv2d(4, 4, 3, padding="same"))
    assert all(isinstance(m, nn.Conv2d) for m in swap_convs(grouped, mine))
    with pytest.raises(ValueError, match="cannot stand in"):
        PerClientConv2d(nn.Conv2d(4, 4, 3, groups=2))
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(swapped(x), model(x), rtol=1e-4, atol=1e-5)
