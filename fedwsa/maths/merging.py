"""Weighted averaging and CART aggregation (METHODS.md section 2, "Centred low-rank aggregation").

Pure tensor functions on *stacked* weights: ``dict[name, Tensor]`` with a leading client axis K.
They run on whatever device the tensors live on.

Choices this module makes where METHODS.md leaves them open:

- Matrix-shaped parameters are recognised by shape: per-client ndim == 2 (Linear weights) is a
  matrix; per-client ndim >= 3 is a conv kernel (Conv1d/2d/3d), reshaped to
  out x (in * prod(kernel)) when ``conv`` is true and plainly averaged otherwise.
- ``k = max(1, floor(r * min(rows, cols) + 1e-9))``: the tiny tolerance keeps binary round-off
  (``0.29 * 100 == 28.999...``) from dropping a rank.
- Arithmetic is in the input dtype when it is float32/float64; other dtypes are computed in
  float32 and cast back (integers rounded), since SVD has no half-precision kernels.
- ``svd="exact"`` takes the top-k eigenvectors of the float64 Gram matrix of the smaller side
  (``SVD_k(D) = U_k U_k^T D``): the same truncated SVD, several times faster than
  ``torch.linalg.svd`` of the whole matrix and, for float32 weights, more accurate.
- ``svd="randomized"`` uses ``torch.svd_lowrank`` with ``q = min(k + oversampling, rows, cols)``
  and ``niter`` power iterations (defaults 8 and 2). It draws from the global torch RNG; pass
  ``seed`` to draw from a forked RNG instead (deterministic, leaves the global state alone).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from numbers import Real

import torch
from torch import Tensor

SVD_METHODS = ("exact", "randomized")
"""Accepted ``svd`` arguments of :func:`cart`."""


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32/float64 stay; everything else is computed in float32."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _cast_back(x: Tensor, dtype: torch.dtype) -> Tensor:
    """Return to the caller's dtype; integers (e.g. BN counters) are rounded, not truncated."""
    if x.dtype == dtype:
        return x
    if dtype.is_floating_point or dtype.is_complex:
        return x.to(dtype)
    return torch.round(x).to(dtype)


def _check_stacked(stacked: Mapping[str, Tensor]) -> int:
    """All stacked tensors must share the leading client axis; returns K."""
    sizes = {name: (t.shape[0] if t.ndim > 0 else None) for name, t in stacked.items()}
    distinct = set(sizes.values())
    if None in distinct or len(distinct) != 1:
        raise ValueError(f"stacked tensors must share a leading client axis, got leading sizes "
                         f"{sizes}")
    return int(next(iter(distinct)))  # type: ignore[arg-type]


def _check_weights(weights: Tensor, k: int) -> Tensor:
    """Validate client weights and return p = w / sum(w) in float64 on the weights' device."""
    if not isinstance(weights, Tensor) or weights.ndim != 1 or weights.shape[0] != k:
        shape = tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
        raise ValueError(f"weights must be a 1-D tensor of length K={k}, got {shape}")
    w = weights.detach().to(torch.float64)
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or not bool(w.sum() > 0):
        raise ValueError(f"weights={weights.tolist()} invalid: need finite, non-negative values "
                         f"with a positive sum")
    return w / w.sum()


def _average(x: Tensor, p: Tensor) -> Tensor:
    """sum_i p_i x_i in the compute dtype (x already in it)."""
    return torch.tensordot(p.to(dtype=x.dtype, device=x.device), x, dims=([0], [0]))


def finite_clients(stacked: Mapping[str, Tensor]) -> Tensor:
    """[K] bool on the CPU: is every weight of client k finite? (What may be merged at all.)

    The flags are reduced where the weights live and copied to the CPU once, not once per
    parameter."""
    device = next(iter(stacked.values())).device
    flags = [torch.isfinite(v.detach().reshape(v.shape[0], -1)).all(dim=1).to(device)
             for v in stacked.values()]
    return torch.stack(flags).all(dim=0).cpu()


def weighted_average(stacked: Mapping[str, Tensor], weights: Tensor) -> dict[str, Tensor]:
    """theta_avg = sum_i p_i theta_i with p = w / sum(w) (METHODS.md section 2; FedAvg)."""
    if not stacked:
        return {}
    p = _check_weights(weights, _check_stacked(stacked))
    out: dict[str, Tensor] = {}
    for name, t in stacked.items():
        x = t.to(_compute_dtype(t.dtype))
        out[name] = _cast_back(_average(x, p), t.dtype)
    return out


def weighted_sums(stacked: Mapping[str, Tensor], coefficients: Tensor) -> dict[str, Tensor]:
    """sum_i c_i theta_i per parameter, in float64 (the linear merges' sufficient statistic).

    Float64 so that partial sums over disjoint groups of clients (one per node) add up to the
    sum over all of them up to float64 round-off, far below float32's: where the clients were
    trained does not show in the merged float32 model. Clients are converted in chunks
    (``float64_chunks``), so a wide model at a large K never needs a float64 copy of its whole
    stack."""
    k = _check_stacked(stacked) if stacked else 0
    c = coefficients.detach().to(torch.float64)
    if c.ndim != 1 or c.shape[0] != k:
        raise ValueError(f"coefficients must be a 1-D tensor of length K={k}, got "
                         f"{tuple(c.shape)}")
    out: dict[str, Tensor] = {}
    for name, t in stacked.items():
        c_t = c.to(t.device)
        total = torch.zeros(t.shape[1:], dtype=torch.float64, device=t.device)
        for rows in float64_chunks(t):
            total += torch.tensordot(c_t[rows], t[rows].detach().to(torch.float64), dims=1)
        out[name] = total
    return out


FLOAT64_CHUNK_BYTES = 1 << 28
"""Float64 copies of stacked weights are made at most this many bytes at a time (256 MiB)."""


def float64_chunks(stacked: Tensor) -> list[slice]:
    """Slices of the client axis of ``stacked`` [K, ...] whose float64 copies each stay under
    ``FLOAT64_CHUNK_BYTES`` (at least one client per slice). A ResNet-18's widest layer at
    K=100 would otherwise take 1.9 GB of float64 on top of the float32 stack."""
    per_client = 8 * max(1, stacked[0].numel()) if stacked.shape[0] else 8
    step = max(1, FLOAT64_CHUNK_BYTES // per_client)
    return [slice(start, start + step) for start in range(0, stacked.shape[0], step)]


def _cart_rank(rank: float, rows: int, cols: int) -> int:
    """k = max(1, floor(r * min(rows, cols))), with a round-off tolerance (module docstring)."""
    return max(1, math.floor(rank * min(rows, cols) + 1e-9))


def _exact_low_rank_sum(d: Tensor, p: Tensor, k: int) -> Tensor:
    """sum_i p_i SVD_k(D_i) exactly, through the float64 Gram matrix of the smaller side.

    SVD_k(D) = U_k U_k^T D, and U_k are the top-k eigenvectors of D D^T (or, for tall D,
    SVD_k(D) = D V_k V_k^T with V_k those of D^T D). A min(rows, cols)-sized symmetric
    eigendecomposition is several times cheaper than the SVD of the full matrix
    (512 x 4608: ~2 s vs ~11 s for 3 clients on one CPU thread), and computing it in float64
    keeps float32 results more accurate than a float32 SVD. Clients are processed in chunks
    (``float64_chunks``) so the float64 copy stays under ``FLOAT64_CHUNK_BYTES``.
    """
    _, rows, cols = d.shape
    tall = rows > cols
    p64 = p.to(device=d.device, dtype=torch.float64)
    out = torch.zeros(rows, cols, dtype=torch.float64, device=d.device)
    for rows_k in float64_chunks(d):
        x = d[rows_k].to(torch.float64)
        x = x.mT if tall else x  # [c, m, n] with m = min(rows, cols)
        _, vecs = torch.linalg.eigh(x @ x.mT)  # ascending eigenvalues
        u = vecs[..., -k:]  # [c, m, k]
        coef = u.mT @ x  # [c, k, n]
        left = (u * p64[rows_k, None, None]).permute(1, 0, 2)  # [m, c, k]
        low = left.reshape(left.shape[0], -1) @ coef.reshape(-1, coef.shape[-1])  # [m, n]
        out += low.mT if tall else low
    return out.to(d.dtype)


def _low_rank_sum(
    d: Tensor, p: Tensor, k: int, svd: str, oversampling: int, niter: int
) -> Tensor:
    """sum_i p_i SVD_k(D_i) for D of shape [K, rows, cols], batched over clients.

    Contracting as one (rows x K*k) @ (K*k x cols) product avoids materialising K low-rank
    reconstructions.
    """
    n_clients, rows, cols = d.shape
    if svd == "exact":
        return _exact_low_rank_sum(d, p, k)
    # torch.svd_lowrank accepts batches (*, m, n); one Gaussian test matrix is shared by
    # the batch, which is fine since each client's range is found independently.
    q = min(k + oversampling, rows, cols)
    u, s, v = torch.svd_lowrank(d, q=q, niter=niter)
    u, s, vh = u[..., :k], s[..., :k], v[..., :k].mT
    p = p.to(device=d.device, dtype=d.dtype)  # p is on the weights' device, often the CPU
    left = u * (s * p.unsqueeze(1)).unsqueeze(1)  # [K, rows, k]
    left = left.permute(1, 0, 2).reshape(rows, n_clients * k)
    return left @ vh.reshape(n_clients * k, cols)


@contextlib.contextmanager
def _seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed only ``device``'s default generator inside the block and restore it afterwards."""
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else []):
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        else:
            torch.default_generator.manual_seed(seed)
        yield


def cart(
    stacked: Mapping[str, Tensor],
    weights: Tensor,
    rank: float,
    lam: float,
    conv: bool = True,
    svd: str = "exact",
    *,
    oversampling: int = 8,
    niter: int = 2,
    seed: int | None = None,
) -> dict[str, Tensor]:
    """CART aggregation (METHODS.md section 2, "Centred low-rank aggregation, CART").

    For each matrix-shaped parameter: theta_avg = sum_i p_i theta_i, D_i = theta_i - theta_avg,
    theta_new = theta_avg + lam * K * sum_i p_i SVD_k(D_i) with k = max(1, floor(r min(rows,
    cols))); with uniform p this is the official theta_avg + lam * sum_i SVD_k(D_i). Every
    other parameter is theta_avg. ``rank`` is ``cart-rank``, ``lam`` is ``cart-lambda``,
    ``conv`` is ``cart-conv``. ``svd="randomized"`` trades exactness for speed: ``oversampling``
    extra range directions and ``niter`` power iterations; ``seed`` (optional) makes it
    deterministic without touching the global RNG (module docstring). Bad arguments raise
    ValueError naming the argument, its value and what is accepted.
    """
    if isinstance(rank, bool) or not isinstance(rank, Real) or not 0 < rank <= 1:
        raise ValueError(f"rank={rank!r} invalid: cart-rank must be a number in (0, 1]")
    if isinstance(lam, bool) or not isinstance(lam, Real) or not math.isfinite(lam):
        raise ValueError(f"lam={lam!r} invalid: cart-lambda must be a finite number")
    if svd not in SVD_METHODS:
        raise ValueError(f"svd={svd!r} invalid: accepted {SVD_METHODS}")
    if oversampling < 0 or niter < 0:
        raise ValueError(f"oversampling={oversampling}, niter={niter} invalid: need >= 0")
    if not stacked:
        return {}
    n_clients = _check_stacked(stacked)
    p = _check_weights(weights, n_clients)

    out: dict[str, Tensor] = {}
    for name, t in stacked.items():
        x = t.to(_compute_dtype(t.dtype))
        avg = _average(x, p)
        is_matrix = t.ndim == 3 or (conv and t.ndim >= 4)
        if not is_matrix or not t.dtype.is_floating_point:
            out[name] = _cast_back(avg, t.dtype)
            continue
        rows = t.shape[1]
        cols = math.prod(t.shape[2:])
        d = (x - avg).reshape(n_clients, rows, cols)
        k = _cart_rank(float(rank), rows, cols)
        rng: contextlib.AbstractContextManager[None] = (
            _seeded_rng(seed, x.device)
            if svd == "randomized" and seed is not None
            else contextlib.nullcontext()
        )
        with rng:
            low = _low_rank_sum(d, p, k, svd, oversampling, niter)
        new = avg + (float(lam) * n_clients) * low.reshape(avg.shape)
        out[name] = _cast_back(new, t.dtype)
    return out
