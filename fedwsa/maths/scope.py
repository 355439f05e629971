"""Weight scopes and the WSA regulariser (METHODS.md section 1, "Weight scope").

A layer's *scope* is the Gaussian fitted to its weights: its mean and population std. Clients
are pulled towards a shared target scope by a KL penalty (section 1.1, "WSA regulariser"), and
the server fuses client scopes into the next target (section 1.2, "Target and scope fusion").

Choices this module makes where METHODS.md leaves them open:

- The std clamp is applied to the variance (``sigma = sqrt(max(var, 1e-16))``), which equals
  clamping sigma at 1e-8 but keeps the gradient finite (zero) for constant layers, where the
  gradient of ``torch.std`` would be NaN.
- Targets, scopes and KL terms are positional tensors ordered like the ``names`` list passed in.
- ``mixture`` fusion clamps the moment-matched variance at 1e-16 against round-off.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

SIGMA_MIN = 1e-8
"""Lower clamp on a scope's std (METHODS.md section 1)."""

FUSION_RULES = ("mean", "mixture", "global", "fixed")
"""Accepted ``wsa-fusion`` rules (METHODS.md section 1.2)."""

_VAR_MIN = SIGMA_MIN**2


def regularised_names(params: Mapping[str, Tensor], stacked: bool = False) -> list[str]:
    """Names of Conv and Linear weights, the layers WSA regularises (METHODS.md section 1).

    Identified by shape so no module types are needed: the name ends with ``weight`` and the
    per-model tensor has at least 2 dims (biases and GroupNorm weights are 1-D). With
    ``stacked=True`` the leading client axis is discounted. Order follows ``params``.
    """
    extra = 1 if stacked else 0
    return [n for n, t in params.items() if n.endswith("weight") and t.ndim >= 2 + extra]


def _mean_std(x: Tensor, dim: int | None = None) -> tuple[Tensor, Tensor]:
    """Mean and clamped population std; the clamp sits on the variance to keep grads finite."""
    if dim is None:
        mu = x.mean()
        var = (x - mu).square().mean()
    else:
        mu = x.mean(dim=dim)
        var = (x - mu.unsqueeze(dim)).square().mean(dim=dim)
    return mu, torch.sqrt(torch.clamp(var, min=_VAR_MIN))


def _empty_scopes(like: Tensor | None, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Empty (mu, sigma) on ``like``'s device, in its dtype when floating (scopes of no layer);
    the default float dtype on the CPU without a tensor to follow."""
    if like is None:
        return torch.zeros(shape), torch.zeros(shape)
    dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
    return (torch.zeros(shape, dtype=dtype, device=like.device),
            torch.zeros(shape, dtype=dtype, device=like.device))


def layer_scope(w: Tensor) -> tuple[Tensor, Tensor]:
    """Scope (mu, sigma) of one layer over all its elements (METHODS.md section 1).

    sigma is the population std clamped at 1e-8; both outputs are differentiable in ``w``.
    """
    return _mean_std(w.reshape(-1))


def stacked_scopes(stacked: Mapping[str, Tensor], names: Sequence[str]) -> tuple[Tensor, Tensor]:
    """Scopes of every client and layer, shapes [K, L] (METHODS.md section 1.2).

    The server (or, with ``node-aggregate``, the node) computes client scopes from the trained
    weights, one vectorised pass per layer. With no names the result is [K, 0]. Reduced in
    float64 and returned in the weights' dtype: float32 reductions round differently with the
    number of threads, and the scopes must not depend on which process computed them.
    """
    if not names:
        like = next(iter(stacked.values()), None)
        k = like.shape[0] if like is not None else 0
        return _empty_scopes(like, (k, 0))
    scopes = [clients_layer_scope(stacked[name]) for name in names]
    return torch.stack([m for m, _ in scopes], dim=1), torch.stack([s for _, s in scopes], dim=1)


def clients_layer_scope(x: Tensor) -> tuple[Tensor, Tensor]:
    """(mu, sigma), [K] each, of one layer's stacked weights [K, ...]: reduced in float64,
    returned in ``x``'s dtype (``stacked_scopes``)."""
    var, mu = torch.var_mean(x.reshape(x.shape[0], -1).double(), dim=1, correction=0)
    return mu.to(x.dtype), torch.sqrt(torch.clamp(var, min=_VAR_MIN)).to(x.dtype)


def model_scopes(params: Mapping[str, Tensor], names: Sequence[str]) -> tuple[Tensor, Tensor]:
    """Scopes of one model's named layers, shapes [L] (round 1's target, `global` fusion)."""
    if not names:
        return _empty_scopes(next(iter(params.values()), None), (0,))
    scopes = [layer_scope(params[name]) for name in names]
    mu = torch.stack([m for m, _ in scopes])
    sigma = torch.stack([s for _, s in scopes])
    return mu, sigma


def scope_kl(mu: Tensor, sigma: Tensor, mu_t: Tensor, sigma_t: Tensor) -> Tensor:
    """Elementwise KL(N(mu, sigma^2) || N(mu_t, sigma_t^2)), METHODS.md section 1.1.

    Closed form ``log(sigma_t/sigma) + (sigma^2 + (mu - mu_t)^2) / (2 sigma_t^2) - 1/2``;
    broadcasts and is differentiable in all four arguments.
    """
    return (
        torch.log(sigma_t / sigma)
        + (sigma.square() + (mu - mu_t).square()) / (2.0 * sigma_t.square())
        - 0.5
    )


def wsa_penalty(
    params: Mapping[str, Tensor], names: Sequence[str], mu_t: Tensor, sigma_t: Tensor
) -> Tensor:
    """Sum over the named layers of KL(layer scope || target), METHODS.md section 1.1.

    ``mu_t``/``sigma_t`` have shape [L] ordered like ``names``. No data-dependent Python
    control flow, so it runs under ``torch.func.vmap`` (client axis on params and targets) and
    ``torch.func.grad``. The caller multiplies by ``wsa-beta``.
    """
    if not names:
        return mu_t.new_zeros(())
    mu, sigma = model_scopes(params, names)
    return scope_kl(mu, sigma, mu_t, sigma_t).sum()


def _normalised(weights: Tensor, k: int, like: Tensor) -> Tensor:
    """Client weights p_i = w_i / sum_j w_j, validated (METHODS.md notation)."""
    if weights.ndim != 1 or weights.shape[0] != k:
        raise ValueError(f"weights must be a 1-D tensor of length K={k}, got shape "
                         f"{tuple(weights.shape)}")
    # Checked and normalised where the weights live (the CPU, usually: no device sync), then
    # moved to the scopes' device.
    w = weights.to(dtype=like.dtype)
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or not bool(w.sum() > 0):
        raise ValueError(f"weights must be finite, non-negative with a positive sum, got "
                         f"{weights.tolist()}")
    return (w / w.sum()).to(like.device)


def fuse_scopes(
    mu: Tensor,
    sigma: Tensor,
    weights: Tensor,
    rule: str,
    *,
    global_scope: tuple[Tensor, Tensor] | None = None,
    fixed_scope: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Fuse client scopes [K, L] into the next target [L] (METHODS.md section 1.2).

    - ``mean``: p-weighted means of mu and sigma.
    - ``mixture``: moment-matched Gaussian of the p-weighted mixture (variance clamped at 1e-16).
    - ``global``: returns ``global_scope``, the scope of the new global model, which the caller
      computes with :func:`model_scopes`; client scopes are ignored.
    - ``fixed``: returns ``fixed_scope`` (round 1's target) unchanged; client scopes are ignored.
    """
    if rule not in FUSION_RULES:
        raise ValueError(f"rule={rule!r} is not a scope fusion rule; accepted: {FUSION_RULES}")
    if rule == "global":
        if global_scope is None:
            raise ValueError("rule='global' needs global_scope=(mu, sigma) of the new global model")
        return global_scope
    if rule == "fixed":
        if fixed_scope is None:
            raise ValueError("rule='fixed' needs fixed_scope=(mu, sigma), round 1's target")
        return fixed_scope
    if mu.ndim != 2 or mu.shape != sigma.shape:
        raise ValueError(f"mu and sigma must both have shape [K, L], got {tuple(mu.shape)} and "
                         f"{tuple(sigma.shape)}")
    p = _normalised(weights, mu.shape[0], mu)
    mu_f = p @ mu
    if rule == "mean":
        return mu_f, p @ sigma
    var = p @ (sigma.square() + mu.square()) - mu_f.square()
    return mu_f, torch.sqrt(torch.clamp(var, min=_VAR_MIN))


def align_to_scope(
    params: Mapping[str, Tensor], names: Sequence[str], mu_t: Tensor, sigma_t: Tensor
) -> dict[str, Tensor]:
    """Rescale the named layers to the target scope (``wsa-align-global``, METHODS.md 1.2).

    ``w <- mu* + (w - mean(w)) * sigma* / std(w)`` with the population std clamped at 1e-8 (a
    constant layer becomes the constant mu*). Returns a new dict; other entries are the same
    tensors as in ``params``.
    """
    out = dict(params)
    for i, name in enumerate(names):
        w = params[name]
        mu, sigma = layer_scope(w)
        target_mu, target_sigma = mu_t[i].to(w.device), sigma_t[i].to(w.device)
        out[name] = (target_mu + (w - mu) * (target_sigma / sigma)).to(w.dtype)
    return out


def sigma_spread(sigma: Tensor) -> float:
    """``scope-sigma-spread``: mean over layers of the population std over clients of sigma.

    Measures how far client scopes drift apart (METHODS.md section 1); 0 when they agree.
    """
    if sigma.ndim != 2:
        raise ValueError(f"sigma must have shape [K, L], got {tuple(sigma.shape)}")
    return float(sigma.std(dim=0, correction=0).mean())
