"""Convolutions that ``vmap`` runs one client at a time: the batched trainer's CPU path.

Under ``vmap`` over stacked weights, PyTorch turns every convolution into one grouped
convolution (a group per client). cuDNN runs that well; oneDNN on a CPU does not for the small
channel counts of FL models, and its grouped backward also computes the gradient of the first
layer's input, which nobody needs. Measured on a 2-core CPU (16 clients, batch 32, NIID-Bench
simple CNN): conv1's backward took 108 ms grouped against 12 ms as 16 ordinary weight-only
backwards, its forward 30 ms against 12 ms, and a whole ``vmap(grad)`` step 10 ms per client
against 6 ms with the convolutions below (the sequential trainer: 8 ms).

``PerClientConv2d`` replaces ``nn.Conv2d`` with an ``autograd.Function`` whose ``vmap`` rule
loops over the clients with ordinary convolutions (plain ops: the Function's own backward
already covers the transforms inside the ``vmap``, and plain ops stay correct under any outer
one), and whose backward asks for the input's
gradient only where autograd needs it. Everything else in the step (pooling, linear layers, the
loss, the SGD update) stays batched over the clients. The maths is ``F.conv2d``'s; the tests
check values and gradients against it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


def _per_client(batch_size: int, in_dims: tuple[int | None, ...], *tensors: torch.Tensor | None
                ) -> list[Any]:
    """Each tensor with its client axis first (broadcast where it has none)."""
    out: list[Any] = []
    for t, d in zip(tensors, in_dims, strict=True):
        if t is None:
            out.append([None] * batch_size)
        elif d is None:
            out.append(t.unsqueeze(0).expand(batch_size, *t.shape))
        else:
            out.append(t.movedim(d, 0))
    return out


class _Geometry:
    """A convolution's stride, padding and dilation, and its forward and backward for one
    client."""

    def __init__(self, stride: list[int], padding: list[int], dilation: list[int]) -> None:
        self.stride, self.padding, self.dilation = stride, padding, dilation

    def forward(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation)

    def backward(self, grad_out: torch.Tensor, x: torch.Tensor, w: torch.Tensor,
                 want_input: bool) -> torch.Tensor:
        """The gradient of the input (``want_input``) or of the weight, one client.

        Under bf16 autocast the forward ran in bf16 on fp32 inputs: the backward does too, and
        the gradient comes back in its input's dtype, as through autocast's own cast.
        """
        dtype = grad_out.dtype
        grads = torch.ops.aten.convolution_backward(
            grad_out, x.to(dtype), w.to(dtype), None, self.stride, self.padding, self.dilation,
            False, [0, 0], 1, [want_input, not want_input, False],
        )
        return grads[0].to(x.dtype) if want_input else grads[1].to(w.dtype)


class _ConvGrad(torch.autograd.Function):
    """One of the two gradients of a convolution; under ``vmap``, one client at a time."""

    @staticmethod
    def forward(grad_out: torch.Tensor, x: torch.Tensor, w: torch.Tensor, geometry: _Geometry,
                want_input: bool) -> torch.Tensor:
        return geometry.backward(grad_out, x, w, want_input)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        pass  # only first derivatives are needed; backward is not defined

    @staticmethod
    def vmap(info: Any, in_dims: tuple[int | None, ...], grad_out: torch.Tensor,
             x: torch.Tensor, w: torch.Tensor, geometry: _Geometry, want_input: bool
             ) -> tuple[torch.Tensor, int]:
        gs, xs, ws = _per_client(info.batch_size, in_dims[:3], grad_out, x, w)
        return torch.stack([geometry.backward(gs[k], xs[k], ws[k], want_input)
                            for k in range(info.batch_size)]), 0


class _Conv(torch.autograd.Function):
    """``F.conv2d`` (groups = 1); under ``vmap``, one ordinary convolution per client."""

    @staticmethod
    def forward(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, geometry: _Geometry
                ) -> torch.Tensor:
        return geometry.forward(x, w, b)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        x, w, _, geometry = inputs
        ctx.save_for_backward(x, w)
        ctx.geometry = geometry

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        gx = _ConvGrad.apply(grad_out, x, w, ctx.geometry, True) if need_x else None
        gw = _ConvGrad.apply(grad_out, x, w, ctx.geometry, False) if need_w else None
        gb = grad_out.sum(dim=(0, 2, 3)) if need_b else None
        return gx, gw, gb, None

    @staticmethod
    def vmap(info: Any, in_dims: tuple[int | None, ...], x: torch.Tensor, w: torch.Tensor,
             b: torch.Tensor | None, geometry: _Geometry) -> tuple[torch.Tensor, int]:
        xs, ws, bs = _per_client(info.batch_size, in_dims[:3], x, w, b)
        return torch.stack([geometry.forward(xs[k], ws[k], bs[k])
                            for k in range(info.batch_size)]), 0


class PerClientConv2d(nn.Module):
    """An ``nn.Conv2d`` (same parameter names) whose ``vmap`` runs one conv per client."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if not supports(conv):
            raise ValueError(f"PerClientConv2d cannot stand in for {conv}")
        self.weight = conv.weight
        self.bias = conv.bias
        self.geometry = _Geometry(list(conv.stride), list(conv.padding),  # type: ignore[arg-type]
                                  list(conv.dilation))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Conv.apply(x, self.weight, self.bias, self.geometry)


def supports(conv: nn.Conv2d) -> bool:
    """Plain convolutions only: one group, zero padding given as numbers."""
    return (conv.groups == 1 and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str))


def swap_convs(model: nn.Module, make: Callable[[nn.Conv2d], nn.Module]) -> nn.Module:
    """A copy of ``model`` with every supported ``nn.Conv2d`` replaced by ``make(conv)``
    (``PerClientConv2d``, ``UnfoldConv2d``).

    Parameter names do not change, so the stacked weights of the original model apply.
    """
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv2d) and supports(child):
                setattr(parent, name, make(child))
    return model


def with_per_client_convs(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose convolutions ``vmap`` runs one client at a time."""
    return swap_convs(model, PerClientConv2d)
