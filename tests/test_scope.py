"""Tests for fedwsa.maths.scope against independent references (METHODS.md section 1)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from fedwsa.maths.scope import (
    FUSION_RULES,
    align_to_scope,
    fuse_scopes,
    layer_scope,
    model_scopes,
    regularised_names,
    scope_kl,
    sigma_spread,
    stacked_scopes,
    wsa_penalty,
)


def _params(gen: torch.Generator, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    """A small CNN-like parameter dict: conv, GroupNorm, linear weights and biases."""
    shapes = {
        "conv.weight": (4, 3, 3, 3),
        "conv.bias": (4,),
        "norm.weight": (4,),
        "norm.bias": (4,),
        "fc.weight": (5, 16),
        "fc.bias": (5,),
    }
    return {n: torch.randn(s, generator=gen, dtype=dtype) * 0.3 + 0.05 for n, s in shapes.items()}


def _stack(gen: torch.Generator, k: int) -> dict[str, torch.Tensor]:
    models = [_params(gen) for _ in range(k)]
    return {n: torch.stack([m[n] for m in models]) for n in models[0]}


def test_regularised_names() -> None:
    gen = torch.Generator().manual_seed(0)
    assert regularised_names(_params(gen)) == ["conv.weight", "fc.weight"]
    assert regularised_names(_stack(gen, 3), stacked=True) == ["conv.weight", "fc.weight"]


def test_kl_matches_torch_distributions() -> None:
    gen = torch.Generator().manual_seed(1)
    mu, mu_t = torch.randn(2, 50, generator=gen, dtype=torch.float64)
    sigma, sigma_t = torch.rand(2, 50, generator=gen, dtype=torch.float64) * 2 + 0.05
    ref = kl_divergence(Normal(mu, sigma), Normal(mu_t, sigma_t))
    torch.testing.assert_close(scope_kl(mu, sigma, mu_t, sigma_t), ref)
    # Broadcasting: a [K, L] set of scopes against one [L] target.
    ref_b = kl_divergence(Normal(mu.view(5, 10), sigma.view(5, 10)), Normal(mu_t[:10],
                                                                            sigma_t[:10]))
    torch.testing.assert_close(scope_kl(mu.view(5, 10), sigma.view(5, 10), mu_t[:10],
                                        sigma_t[:10]), ref_b)


def test_kl_zero_at_equal_scopes_and_positive_otherwise() -> None:
    gen = torch.Generator().manual_seed(2)
    mu = torch.randn(20, generator=gen, dtype=torch.float64)
    sigma = torch.rand(20, generator=gen, dtype=torch.float64) + 0.1
    torch.testing.assert_close(scope_kl(mu, sigma, mu, sigma), torch.zeros(20, dtype=torch.float64))
    assert bool((scope_kl(mu, sigma, mu + 0.1, sigma) > 0).all())
    assert bool((scope_kl(mu, sigma, mu, sigma * 1.5) > 0).all())


def test_layer_scope_vs_numpy_and_clamp() -> None:
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(6, 7, generator=gen, dtype=torch.float64)
    mu, sigma = layer_scope(w)
    assert math.isclose(mu.item(), np.mean(w.numpy()), rel_tol=1e-12)
    assert math.isclose(sigma.item(), np.std(w.numpy(), ddof=0), rel_tol=1e-12)
    const = torch.full((3, 3), 0.7, dtype=torch.float64, requires_grad=True)
    mu_c, sigma_c = layer_scope(const)
    assert sigma_c.item() == pytest.approx(1e-8)
    (g,) = torch.autograd.grad(mu_c + sigma_c, const)
    assert bool(torch.isfinite(g).all())


def test_stacked_scopes_vs_numpy_loop() -> None:
    gen = torch.Generator().manual_seed(4)
    stacked = _stack(gen, 5)
    names = regularised_names(stacked, stacked=True)
    mu, sigma = stacked_scopes(stacked, names)
    assert mu.shape == sigma.shape == (5, len(names))
    for i in range(5):
        for j, name in enumerate(names):
            w = stacked[name][i].numpy()
            assert mu[i, j].item() == pytest.approx(np.mean(w), rel=1e-12, abs=1e-15)
            assert sigma[i, j].item() == pytest.approx(np.std(w, ddof=0), rel=1e-12)


def test_model_scopes_vs_numpy() -> None:
    gen = torch.Generator().manual_seed(5)
    params = _params(gen)
    names = regularised_names(params)
    mu, sigma = model_scopes(params, names)
    np.testing.assert_allclose(mu.numpy(), [np.mean(params[n].numpy()) for n in names])
    np.testing.assert_allclose(sigma.numpy(), [np.std(params[n].numpy()) for n in names])


def _penalty_numpy(params: dict[str, torch.Tensor], names: list[str], mu_t: np.ndarray,
                   sigma_t: np.ndarray) -> float:
    total = 0.0
    for j, n in enumerate(names):
        w = params[n].detach().numpy()
        m, s = np.mean(w), np.std(w)
        total += (np.log(sigma_t[j] / s) + (s**2 + (m - mu_t[j]) ** 2) / (2 * sigma_t[j] ** 2)
                  - 0.5)
    return float(total)


def test_wsa_penalty_value_and_gradient_vs_finite_differences() -> None:
    gen = torch.Generator().manual_seed(6)
    params = _params(gen)
    names = regularised_names(params)
    mu_t = torch.tensor([0.01, -0.02], dtype=torch.float64)
    sigma_t = torch.tensor([0.2, 0.5], dtype=torch.float64)
    value = wsa_penalty(params, names, mu_t, sigma_t)
    assert value.item() == pytest.approx(
        _penalty_numpy(params, names, mu_t.numpy(), sigma_t.numpy()), rel=1e-12)

    grads = torch.func.grad(lambda p: wsa_penalty(p, names, mu_t, sigma_t))(params)
    for n in ("conv.bias", "norm.weight", "fc.bias"):
        assert bool((grads[n] == 0).all())
    eps = 1e-6
    for n in names:
        flat = params[n].reshape(-1)
        for idx in range(0, flat.numel(), 7):
            plus = {k: v.clone() for k, v in params.items()}
            minus = {k: v.clone() for k, v in params.items()}
            plus[n].view(-1)[idx] += eps
            minus[n].view(-1)[idx] -= eps
            fd = (_penalty_numpy(plus, names, mu_t.numpy(), sigma_t.numpy())
                  - _penalty_numpy(minus, names, mu_t.numpy(), sigma_t.numpy())) / (2 * eps)
            assert grads[n].reshape(-1)[idx].item() == pytest.approx(fd, rel=1e-5, abs=1e-8)


def test_wsa_penalty_vmap_equals_loop() -> None:
    gen = torch.Generator().manual_seed(7)
    k = 4
    stacked = _stack(gen, k)
    names = regularised_names(stacked, stacked=True)
    mu_t = torch.randn(k, len(names), generator=gen, dtype=torch.float64) * 0.1
    sigma_t = torch.rand(k, len(names), generator=gen, dtype=torch.float64) + 0.1
    batched = torch.func.vmap(lambda p, m, s: wsa_penalty(p, names, m, s))(stacked, mu_t, sigma_t)
    loop = torch.stack([
        wsa_penalty({n: t[i] for n, t in stacked.items()}, names, mu_t[i], sigma_t[i])
        for i in range(k)
    ])
    torch.testing.assert_close(batched, loop)
    # Per-client gradients through vmap(grad(...)) match per-client grads too.
    g_batched = torch.func.vmap(torch.func.grad(lambda p, m, s: wsa_penalty(p, names, m, s)))(
        stacked, mu_t, sigma_t)
    for i in range(k):
        g_i = torch.func.grad(lambda p, i=i: wsa_penalty(p, names, mu_t[i], sigma_t[i]))(
            {n: t[i] for n, t in stacked.items()})
        for n in names:
            torch.testing.assert_close(g_batched[n][i], g_i[n])


def _fuse_numpy(mu: np.ndarray, sigma: np.ndarray, w: np.ndarray, rule: str
                ) -> tuple[np.ndarray, np.ndarray]:
    p = w / w.sum()
    k, n_layers = mu.shape
    mu_f = np.zeros(n_layers)
    sig_f = np.zeros(n_layers)
    for j in range(n_layers):
        for i in range(k):
            mu_f[j] += p[i] * mu[i, j]
        if rule == "mean":
            for i in range(k):
                sig_f[j] += p[i] * sigma[i, j]
        else:  # mixture: second moment minus squared mean
            second = sum(p[i] * (sigma[i, j] ** 2 + mu[i, j] ** 2) for i in range(k))
            sig_f[j] = math.sqrt(second - mu_f[j] ** 2)
    return mu_f, sig_f


@pytest.mark.parametrize("rule", ["mean", "mixture"])
def test_fuse_scopes_moment_rules_vs_numpy(rule: str) -> None:
    gen = torch.Generator().manual_seed(8)
    mu = torch.randn(6, 3, generator=gen, dtype=torch.float64) * 0.1
    sigma = torch.rand(6, 3, generator=gen, dtype=torch.float64) + 0.05
    w = torch.tensor([10.0, 3.0, 0.0, 7.0, 1.0, 4.0], dtype=torch.float64)
    mu_f, sig_f = fuse_scopes(mu, sigma, w, rule)
    ref_mu, ref_sig = _fuse_numpy(mu.numpy(), sigma.numpy(), w.numpy(), rule)
    np.testing.assert_allclose(mu_f.numpy(), ref_mu, rtol=1e-12)
    np.testing.assert_allclose(sig_f.numpy(), ref_sig, rtol=1e-12)


def test_fuse_mixture_against_sampled_mixture_std() -> None:
    """The mixture rule's sigma is the std of the pooled p-weighted mixture distribution."""
    mu = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    sigma = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    w = torch.tensor([1.0, 3.0], dtype=torch.float64)
    _, sig_f = fuse_scopes(mu, sigma, w, "mixture")
    # Law of total variance: E[Var] + Var[E] = (0.25*1 + 0.75*4) + 0.25*0.75*1^2.
    assert sig_f.item() == pytest.approx(math.sqrt(3.25 + 0.1875), rel=1e-12)


def test_fuse_global_and_fixed_return_given_scopes() -> None:
    mu = torch.zeros(3, 2)
    sigma = torch.ones(3, 2)
    w = torch.ones(3)
    g = (torch.tensor([0.1, 0.2]), torch.tensor([0.3, 0.4]))
    f = (torch.tensor([0.5, 0.6]), torch.tensor([0.7, 0.8]))
    out_g = fuse_scopes(mu, sigma, w, "global", global_scope=g, fixed_scope=f)
    out_f = fuse_scopes(mu, sigma, w, "fixed", global_scope=g, fixed_scope=f)
    for got, want in ((out_g, g), (out_f, f)):
        torch.testing.assert_close(got[0], want[0])
        torch.testing.assert_close(got[1], want[1])
    with pytest.raises(ValueError, match="global_scope"):
        fuse_scopes(mu, sigma, w, "global")
    with pytest.raises(ValueError, match="fixed_scope"):
        fuse_scopes(mu, sigma, w, "fixed")


def test_fuse_unknown_rule_and_bad_weights() -> None:
    assert FUSION_RULES == ("mean", "mixture", "global", "fixed")
    mu, sigma = torch.zeros(3, 2), torch.ones(3, 2)
    with pytest.raises(ValueError, match="median") as exc:
        fuse_scopes(mu, sigma, torch.ones(3), "median")
    assert "mixture" in str(exc.value)
    with pytest.raises(ValueError, match="weights"):
        fuse_scopes(mu, sigma, torch.ones(2), "mean")
    with pytest.raises(ValueError, match="weights"):
        fuse_scopes(mu, sigma, torch.tensor([1.0, -1.0, 1.0]), "mean")


def test_align_to_scope_hits_target_and_leaves_others() -> None:
    gen = torch.Generator().manual_seed(9)
    params = _params(gen)
    names = regularised_names(params)
    mu_t = torch.tensor([0.3, -0.1], dtype=torch.float64)
    sigma_t = torch.tensor([0.05, 2.0], dtype=torch.float64)
    out = align_to_scope(params, names, mu_t, sigma_t)
    assert out is not params
    for j, n in enumerate(names):
        w = out[n].numpy()
        assert np.mean(w) == pytest.approx(mu_t[j].item(), rel=1e-10)
        assert np.std(w, ddof=0) == pytest.approx(sigma_t[j].item(), rel=1e-10)
        # Shape of the weight distribution is kept: standardised values are unchanged.
        orig = params[n].numpy()
        np.testing.assert_allclose((w - w.mean()) / w.std(),
                                   (orig - orig.mean()) / orig.std(), atol=1e-10)
    for n in ("conv.bias", "norm.weight", "norm.bias", "fc.bias"):
        assert torch.equal(out[n], params[n])


def test_sigma_spread_vs_numpy() -> None:
    gen = torch.Generator().manual_seed(10)
    sigma = torch.rand(7, 4, generator=gen, dtype=torch.float64)
    ref = float(np.mean(np.std(sigma.numpy(), axis=0, ddof=0)))
    assert sigma_spread(sigma) == pytest.approx(ref, rel=1e-12)
    assert sigma_spread(torch.ones(5, 3)) == 0.0
