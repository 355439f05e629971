"""Tests for fedwsa.maths.merging against numpy references (METHODS.md section 2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedwsa.maths.merging import cart, finite_clients, weighted_average

SHAPES = {
    "conv.weight": (16, 8, 3, 3),
    "conv.bias": (16,),
    "norm.weight": (16,),
    "fc1.weight": (40, 30),
    "fc1.bias": (40,),
    "fc2.weight": (10, 40),
}


def _stacked(k: int, seed: int, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn((k, *s), generator=gen, dtype=dtype) for n, s in SHAPES.items()}


def _np(stacked: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {n: t.double().numpy() for n, t in stacked.items()}


def _avg_ref(x: np.ndarray, p: np.ndarray) -> np.ndarray:
    out = np.zeros(x.shape[1:])
    for i in range(x.shape[0]):
        out += p[i] * x[i]
    return out


def _cart_ref(stacked: dict[str, np.ndarray], w: np.ndarray, r: float, lam: float,
              conv: bool = True, uniform_official: bool = False) -> dict[str, np.ndarray]:
    """Loop-over-clients CART on numpy.linalg.svd, float64 (METHODS.md section 2).

    With ``uniform_official`` it applies the official rule theta_avg + lam * sum_i SVD_k(D_i).
    """
    p = w / w.sum()
    k_clients = len(w)
    out = {}
    for name, x in stacked.items():
        avg = _avg_ref(x, p)
        if not (x.ndim == 3 or (conv and x.ndim == 5)):
            out[name] = avg
            continue
        rows = x.shape[1]
        mats = x.reshape(k_clients, rows, -1)
        avg_m = avg.reshape(rows, -1)
        k = max(1, int(math.floor(r * min(mats.shape[1:]))))
        acc = np.zeros_like(avg_m)
        for i in range(k_clients):
            u, s, vt = np.linalg.svd(mats[i] - avg_m, full_matrices=False)
            low = (u[:, :k] * s[:k]) @ vt[:k]
            acc += low if uniform_official else k_clients * p[i] * low
        out[name] = (avg_m + lam * acc).reshape(avg.shape)
    return out


def _assert_dicts_close(got: dict[str, torch.Tensor], want: dict[str, np.ndarray],
                        atol: float = 1e-10, rtol: float = 1e-10) -> None:
    assert set(got) == set(want)
    for n in want:
        np.testing.assert_allclose(got[n].double().numpy(), want[n], atol=atol, rtol=rtol,
                                   err_msg=n)


def test_weighted_average_vs_numpy() -> None:
    st = _stacked(5, 0)
    w = torch.tensor([3.0, 1.0, 0.0, 2.0, 4.0])
    ref = {n: _avg_ref(x, w.double().numpy() / 10.0) for n, x in _np(st).items()}
    _assert_dicts_close(weighted_average(st, w), ref)
    # float32 input stays float32 and agrees to float32 precision; np.average as second reference.
    st32 = {n: t.float() for n, t in st.items()}
    got32 = weighted_average(st32, w)
    for n, t in got32.items():
        assert t.dtype == torch.float32
        np.testing.assert_allclose(t.numpy(), np.average(st32[n].numpy(), axis=0,
                                                         weights=w.numpy()), rtol=1e-5, atol=1e-6)


def test_weighted_average_integer_buffer_rounds() -> None:
    st = {"bn.num_batches_tracked": torch.tensor([10, 11, 13])}
    out = weighted_average(st, torch.tensor([1.0, 1.0, 1.0]))
    assert out["bn.num_batches_tracked"].dtype == torch.int64
    assert out["bn.num_batches_tracked"].item() == round(34 / 3)


@pytest.mark.parametrize("lam", [0.5, 1.0, 1.9, 3.0])
def test_full_rank_gives_weighted_average(lam: float) -> None:
    st = _stacked(5, 1)
    w = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    ref = {n: _avg_ref(x, w.double().numpy() / 15.0) for n, x in _np(st).items()}
    _assert_dicts_close(cart(st, w, rank=1.0, lam=lam), ref, atol=1e-9)


@pytest.mark.parametrize(("r", "lam"), [(0.08, 1.5), (0.25, 1.9), (0.5, 2.0), (1.0, 0.7)])
def test_two_equal_clients_give_average(r: float, lam: float) -> None:
    st = _stacked(2, 2)
    w = torch.tensor([7.0, 7.0])
    ref = {n: 0.5 * (x[0] + x[1]) for n, x in _np(st).items()}
    _assert_dicts_close(cart(st, w, rank=r, lam=lam), ref, atol=1e-9)


@pytest.mark.parametrize(("r", "lam"), [(0.08, 1.5), (0.16, 1.9), (0.32, 2.0)])
def test_three_plus_clients_match_reference_and_differ_from_average(r: float, lam: float) -> None:
    st = _stacked(4, 3)
    w = torch.tensor([5.0, 1.0, 2.5, 0.5])
    ref = _cart_ref(_np(st), w.numpy().astype(np.float64), r, lam)
    got = cart(st, w, rank=r, lam=lam)
    _assert_dicts_close(got, ref, atol=1e-9)
    avg = weighted_average(st, w)
    for n in ("conv.weight", "fc1.weight", "fc2.weight"):
        assert not torch.allclose(got[n], avg[n], atol=1e-3), n


def test_uniform_weights_reduce_to_official_rule() -> None:
    st = _stacked(5, 4)
    w = torch.full((5,), 3.0)
    ref = _cart_ref(_np(st), np.ones(5), 0.16, 1.9, uniform_official=True)
    _assert_dicts_close(cart(st, w, rank=0.16, lam=1.9), ref, atol=1e-9)


def test_non_matrix_params_are_weighted_average() -> None:
    st = _stacked(4, 5)
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])
    got = cart(st, w, rank=0.25, lam=2.0)
    pw = w.double().numpy() / 10.0
    for n in ("conv.bias", "norm.weight", "fc1.bias"):
        np.testing.assert_allclose(got[n].numpy(), _avg_ref(st[n].numpy(), pw), atol=1e-12)


def test_conv_kernels_reshaped_and_conv_false_averages() -> None:
    st = _stacked(3, 6)
    w = torch.tensor([2.0, 1.0, 1.0])
    got = cart(st, w, rank=0.25, lam=1.5, conv=True)
    ref = _cart_ref(_np(st), w.double().numpy(), 0.25, 1.5, conv=True)
    np.testing.assert_allclose(got["conv.weight"].numpy(), ref["conv.weight"], atol=1e-9)

    got_nc = cart(st, w, rank=0.25, lam=1.5, conv=False)
    ref_nc = _cart_ref(_np(st), w.double().numpy(), 0.25, 1.5, conv=False)
    _assert_dicts_close(got_nc, ref_nc, atol=1e-9)
    pw = w.double().numpy() / 4.0
    np.testing.assert_allclose(got_nc["conv.weight"].numpy(), _avg_ref(st["conv.weight"].numpy(),
                                                                       pw), atol=1e-12)
    # Linear layers still get CART when conv=False.
    assert not np.allclose(got_nc["fc1.weight"].numpy(), _avg_ref(st["fc1.weight"].numpy(), pw))


def test_rank_floor_is_robust_to_round_off() -> None:
    """0.29 * 100 is 28.999... in binary; k must still be 29 = floor of the exact product."""
    gen = torch.Generator().manual_seed(7)
    st = {"fc.weight": torch.randn(3, 100, 120, generator=gen, dtype=torch.float64)}
    w = torch.tensor([1.0, 2.0, 3.0])
    got = cart(st, w, rank=0.29, lam=1.2)
    x = st["fc.weight"].numpy()
    p = w.double().numpy() / 6.0
    avg = _avg_ref(x, p)
    want = avg.copy()
    for i in range(3):
        u, s, vt = np.linalg.svd(x[i] - avg, full_matrices=False)
        want += 1.2 * 3 * p[i] * (u[:, :29] * s[:29]) @ vt[:29]
    np.testing.assert_allclose(got["fc.weight"].numpy(), want, atol=1e-9)


def test_float32_input_matches_float64_reference() -> None:
    st = _stacked(4, 8, dtype=torch.float32)
    w = torch.tensor([1.0, 1.0, 2.0, 3.0])
    got = cart(st, w, rank=0.16, lam=1.5)
    for t in got.values():
        assert t.dtype == torch.float32
    _assert_dicts_close(got, _cart_ref(_np(st), w.double().numpy(), 0.16, 1.5), atol=2e-4,
                        rtol=1e-4)


def _gapped_stacked(p: np.ndarray, rank_k: dict[str, int], seed: int
                    ) -> dict[str, torch.Tensor]:
    """Three clients theta_i = base + D_i with sum_i p_i D_i = 0 and a sharp gap at k in each D_i.

    D_1 = A + N_1, D_2 = B + N_2, D_3 = -(p_1 A + p_2 B) / p_3 + N_3, where A (singular values
    10..8) and B (1..0.8) are rank k on orthogonal row/column blocks and the noise N_i ~ 1e-6
    is p-centred. Each D_i's top-k part is well separated from the rest, so randomized and
    exact SVD must agree, and sum_i p_i SVD_k(D_i) ~ p_2 B is far from zero.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in SHAPES.items():
        if len(shape) == 1:
            out[name] = torch.from_numpy(rng.normal(size=(3, *shape)))
            continue
        rows, cols = shape[0], int(np.prod(shape[1:]))
        k = rank_k[name]
        u, _ = np.linalg.qr(rng.normal(size=(rows, 2 * k)))
        v, _ = np.linalg.qr(rng.normal(size=(cols, 2 * k)))
        a = (u[:, :k] * np.linspace(10.0, 8.0, k)) @ v[:, :k].T
        b = (u[:, k:] * np.linspace(1.0, 0.8, k)) @ v[:, k:].T
        d = np.stack([a, b, -(p[0] * a + p[1] * b) / p[2]])
        noise = 1e-6 * rng.normal(size=(3, rows, cols))
        d += noise - np.tensordot(p, noise, axes=1)
        x = rng.normal(size=(rows, cols)) + d
        out[name] = torch.from_numpy(x.reshape(3, *shape))
    return out


def test_randomized_matches_exact_with_spectral_gap() -> None:
    r = 0.25
    w = torch.tensor([1.0, 2.0, 3.0])
    p = w.double().numpy() / w.sum().item()
    ks = {n: max(1, math.floor(r * min(s[0], int(np.prod(s[1:]))))) for n, s in SHAPES.items()
          if len(s) > 1}
    st = _gapped_stacked(p, ks, seed=9)
    exact = cart(st, w, rank=r, lam=1.9)
    _assert_dicts_close(exact, _cart_ref(_np(st), w.double().numpy(), r, 1.9), atol=1e-9)
    rand = cart(st, w, rank=r, lam=1.9, svd="randomized", seed=123)
    # oversampling=2 makes q < 2k for fc1/conv, so only the spectral gap (plus power
    # iterations) lets the global-RNG range finder recover the exact top-k part.
    torch.manual_seed(0)
    rand_global = cart(st, w, rank=r, lam=1.9, svd="randomized", oversampling=2, niter=8)
    avg = weighted_average(st, w)
    for n in st:
        torch.testing.assert_close(rand[n], exact[n], atol=1e-7, rtol=1e-7)
        torch.testing.assert_close(rand_global[n], exact[n], atol=1e-7, rtol=1e-7)
        if n in ks:  # CART adds about lam * K * p_2 * B to the average here.
            assert (exact[n] - avg[n]).abs().max().item() > 1e-2, n


def test_randomized_seed_is_deterministic_and_leaves_global_rng() -> None:
    st = _stacked(4, 10)
    w = torch.ones(4)
    torch.manual_seed(42)
    before = torch.random.get_rng_state()
    a = cart(st, w, rank=0.1, lam=1.5, svd="randomized", seed=5)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = cart(st, w, rank=0.1, lam=1.5, svd="randomized", seed=5)
    for n in a:
        assert torch.equal(a[n], b[n])


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"rank": 0.0}, "rank"),
        ({"rank": 1.5}, "rank"),
        ({"rank": float("nan")}, "rank"),
        ({"lam": float("inf")}, "lam"),
        ({"lam": float("nan")}, "lam"),
        ({"svd": "qr"}, "svd"),
        ({"weights": torch.ones(3)}, "weights"),
        ({"weights": torch.tensor([1.0, -1.0, 1.0, 1.0])}, "weights"),
        ({"weights": torch.zeros(4)}, "weights"),
        ({"weights": torch.ones(4, 1)}, "weights"),
    ],
)
def test_bad_arguments_raise(kwargs: dict[str, object], needle: str) -> None:
    args: dict[str, object] = {"stacked": _stacked(4, 11), "weights": torch.ones(4), "rank": 0.2,
                               "lam": 1.0}
    args.update(kwargs)
    with pytest.raises(ValueError, match=needle):
        cart(**args)  # type: ignore[arg-type]


def test_unequal_leading_axes_raise() -> None:
    st = _stacked(4, 12)
    st["extra.weight"] = torch.randn(3, 5, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="leading"):
        cart(st, torch.ones(4), rank=0.2, lam=1.0)
    with pytest.raises(ValueError, match="leading"):
        weighted_average(st, torch.ones(4))
    with pytest.raises(ValueError, match="weights"):
        weighted_average(_stacked(4, 13), torch.ones(5))


@pytest.mark.parametrize("svd", ["exact", "randomized"])
def test_one_client_or_zero_lambda_gives_average(svd: str) -> None:
    """A round where one client succeeded keeps its weights; lam = 0 is plain averaging."""
    one = _stacked(1, 14)
    got = cart(one, torch.tensor([3.0]), rank=0.16, lam=1.9, svd=svd, seed=0)
    _assert_dicts_close(got, {n: x[0] for n, x in _np(one).items()}, atol=1e-12)
    st = _stacked(4, 15)
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])
    ref = {n: _avg_ref(x, w.double().numpy() / 10.0) for n, x in _np(st).items()}
    _assert_dicts_close(cart(st, w, rank=0.16, lam=0.0, svd=svd, seed=0), ref, atol=1e-12)


def test_exact_cart_in_client_chunks_matches_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """The exact path converts clients to float64 in chunks; one client per chunk changes
    nothing (tall fc1 and wide conv/fc2 matrices both covered)."""
    import fedwsa.maths.merging as merging

    st = _stacked(5, 16, dtype=torch.float32)
    w = torch.tensor([1.0, 3.0, 2.0, 2.0, 5.0])
    whole = cart(st, w, rank=0.2, lam=1.9)
    monkeypatch.setattr(merging, "FLOAT64_CHUNK_BYTES", 1)
    chunked = cart(st, w, rank=0.2, lam=1.9)
    ref = _cart_ref(_np(st), w.double().numpy(), 0.2, 1.9)
    _assert_dicts_close(chunked, ref, atol=2e-5, rtol=1e-5)
    for n in whole:
        torch.testing.assert_close(chunked[n], whole[n], rtol=1e-6, atol=1e-6)


def test_centred_updates_of_lower_rank_than_k_give_average() -> None:
    """If every D_i has rank < k, SVD_k(D_i) = D_i and the sum is sum_i p_i D_i = 0."""
    gen = torch.Generator().manual_seed(17)
    base = torch.randn(30, 50, generator=gen, dtype=torch.float64)
    a, b = torch.randn(3, 30, 1, generator=gen, dtype=torch.float64), torch.randn(
        3, 1, 50, generator=gen, dtype=torch.float64)
    st = {"fc.weight": base + a @ b}  # theta_i = base + a_i b_i^T: D_i has rank <= 2
    w = torch.tensor([1.0, 2.0, 4.0])
    got = cart(st, w, rank=0.2, lam=1.9)  # k = 6
    want = _avg_ref(st["fc.weight"].numpy(), w.double().numpy() / 7.0)
    np.testing.assert_allclose(got["fc.weight"].numpy(), want, atol=1e-10)


def test_finite_clients_flags_any_non_finite_weight_per_client() -> None:
    stacked = {"w": torch.zeros(4, 3, 2), "b": torch.zeros(4, 3)}
    stacked["w"][1, 2, 0] = float("nan")
    stacked["b"][3, 1] = float("-inf")
    expected = [all(np.isfinite(v[k].numpy()).all() for v in stacked.values()) for k in range(4)]
    assert finite_clients(stacked).tolist() == expected == [True, False, True, False]
