"""Convolutions as unfold + one matrix product per client: a GPU path.

Under ``vmap`` over stacked weights PyTorch runs every convolution as ONE grouped convolution
(a group per client). For FL models' few channels per group, cuDNN's grouped kernels (their
weight gradient most of all) are known to run far below the chip's rate (pytorch/pytorch
#70954, #73764), and issue 15 measured the batched trainer at a few percent of an H200's
arithmetic. ``UnfoldConv2d`` computes the same convolution as ``F.unfold`` (im2col) followed
by an ``einsum`` that, under ``vmap``, becomes one batched matrix product over the clients,
[clients, out, in*k*k] @ [clients, in*k*k, batch*positions], which cuBLAS runs at full width;
autograd gives the weight gradient as the transposed product and the input gradient through
``F.fold``. The price is memory: the unfolded input is k*k times the input (conv1 of the
simple CNN: about 19x, 2.7 GB for 180 clients x 64 images in fp32), kept for the backward.

Selected with ``conv-impl='unfold'``; on a GPU ``auto`` times it against grouped convolutions
on the node's first chunk and keeps the faster (``fedwsa.clients.batched.AUTO_CONV_IMPLS``).
The maths is ``F.conv2d``'s; ``tests/test_per_client_conv.py`` checks values and gradients
against it.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class UnfoldConv2d(nn.Module):
    """An ``nn.Conv2d`` (same parameter names) computed as unfold + matrix product."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.weight = conv.weight
        self.bias = conv.bias
        self.kernel_size = tuple(conv.kernel_size)
        self.stride = tuple(conv.stride)
        self.padding = tuple(conv.padding)  # type: ignore[arg-type]
        self.dilation = tuple(conv.dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        out_h, out_w = (
            (size + 2 * p - d * (k - 1) - 1) // s + 1
            for size, p, d, k, s in zip((height, width), self.padding, self.dilation,
                                        self.kernel_size, self.stride, strict=True))
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)
        # [out, in*k*k] x [batch, in*k*k, positions]: one product over batch and positions
        out = torch.einsum("ok,bkl->bol", self.weight.flatten(1), cols)
        if self.bias is not None:
            out = out + self.bias[:, None]
        return out.reshape(batch, -1, out_h, out_w)
