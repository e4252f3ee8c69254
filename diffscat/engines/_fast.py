"""Fast far-field routes: Chebyshev slice compression and a parity-folded separable DFT.

**Slice compression.** The Ewald phase of eq. 9 couples every slice to every pixel:
Psi(q) = sum_s exp(i qz z_s) B_s(qx, qy), B_s the 2-D DFT of slice s. With qz confined to a static interval
[q0 - h, q0 + h] we write exp(i qz z) = exp(i q0 z) exp(i (qz - q0) z) and interpolate the second factor as a
function of t = (qz - q0) / h in [-1, 1] at K Chebyshev nodes, written in the Chebyshev basis T_k(t):

    exp(i h t z_s) = sum_k C[s, k] T_k(t) + e,   |e| <= (h max|z|)^K / (2^(K-1) K!)

(the classical bound for interpolation at Chebyshev nodes). Hence Psi = sum_k T_k(t) DFT2[V_k] with
V_k = sum_s C[s, k] exp(i q0 z_s) U_s: K planes instead of nz slices, the per-pixel weights T_k(t) are real and
come from the three-term recurrence (no complex exponentials per pixel and plane), and K is chosen so the bound
is below the working precision (K = 25 for R = 10 lambda at 30 deg in float32, against nz = 87 slices). The
result equals the slice sum up to that bound times sum |U| (an absolute error on Psi; docs/performance.md).

**Parity folding.** On a QGrid the detector axes are symmetric (q_{m-1-k} = -q_k) and so is the voxel grid;
qz is even in qx and qy. Splitting each plane into even/odd parts along x and y turns the complex DFT matrices
into real cos/sin matrices of half size per axis, and only one quadrant of outputs is computed (the other three
follow by sign flips). The big matmul then costs one real GEMM of full size instead of four (a complex one).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Complex, Float

from .._grid import VoxelGrid

__all__ = ["chebyshev_planes", "chebyshev_t", "compressed_far_field"]

HIGHEST = jax.lax.Precision.HIGHEST
# Plane-axis layout of the x-stage GEMM output: None = by measurement (middle axis for a plain forward pass,
# minor axis when differentiated: XLA:CPU runs the forward ~2x faster with the planes in the middle, the
# backward ~1.5x faster with them minor; docs/performance.md). True / False force one layout.
_PLANE_MINOR: bool | None = None


def _is_differentiated(x) -> bool:
    """True when `x` carries a JVP/linearize tracer at any level (layout choice only, never semantics)."""
    while isinstance(x, jax.core.Tracer):
        if type(x).__name__ in ("JVPTracer", "LinearizeTracer"):
            return True
        x = getattr(x, "primal", getattr(x, "val", None))
    return False


def chebyshev_planes(z: np.ndarray, halfspan: float, tol: float) -> np.ndarray | None:
    """Coefficients C (nz, K), complex, with exp(i t z_s) = sum_k C[s, k] T_k(t / halfspan) + e for every
    |t| <= halfspan, |e| <= (halfspan max|z|)^K / (2^(K-1) K!) <= `tol` (T_k: Chebyshev polynomials).

    Built by interpolating t -> exp(i t z_s) at the K Chebyshev nodes t_j and converting the Lagrange basis to
    the T_k basis (a DCT), in float64 at trace time (z static). Returns None when K would not be smaller than
    the number of slices (then the plain slice sum is cheaper).
    """
    z = np.asarray(z, dtype=np.float64)
    nz = z.size
    c = abs(float(halfspan)) * (float(np.max(np.abs(z))) if nz else 0.0)
    K = 1
    while K < nz:  # bound(K) = c^K / (2^(K-1) K!), in logs
        if c == 0.0:
            break
        logb = K * math.log(c) - (K - 1) * math.log(2.0) - math.lgamma(K + 1)
        if logb < math.log(tol):
            break
        K += 1
    if K >= nz:
        return None
    theta = (2 * np.arange(K) + 1) * np.pi / (2 * K)
    tj = np.cos(theta)  # nodes
    # Lagrange basis at Chebyshev nodes in the T_k basis: l_j(t) = (2/K) sum_k' T_k(t_j) T_k(t), k = 0 halved
    D = (2.0 / K) * np.cos(np.outer(theta, np.arange(K)))  # D[j, k] = (2/K) T_k(t_j)
    D[:, 0] *= 0.5
    F = np.exp(1j * float(halfspan) * np.outer(z, tj))  # (nz, K): exp(i h z_s t_j)
    return F @ D


def chebyshev_t(t, K: int):
    """T_0..T_{K-1}(t) stacked on a new last axis, by the three-term recurrence (stable for |t| <= 1)."""
    out = [jnp.ones_like(t), t]
    for _ in range(2, K):
        out.append(2 * t * out[-1] - out[-2])
    return jnp.stack(out[:K], axis=-1)


def _fold(v, axis: int):
    """Even and odd parts of `v` along a symmetric axis, on its non-negative half.

    For positions x_i = -x_{n-1-i}: sum_i v_i exp(-i q x_i) = sum_u E_u cos(q x_u) - i sum_u O_u sin(q x_u),
    u over the ceil(n/2) positions x_u >= 0, E = v_u + v_mirror (v_c alone at x = 0), O = v_u - v_mirror.
    """
    n = v.shape[axis]
    h = (n + 1) // 2
    up = jax.lax.slice_in_dim(v, n - h, n, axis=axis)
    lo = jnp.flip(jax.lax.slice_in_dim(v, 0, h, axis=axis), axis=axis)
    E = up + lo
    O = up - lo
    if n % 2:
        scale = jnp.ones(h, v.real.dtype).at[0].set(0.5)
        shp = [1] * v.ndim
        shp[axis] = h
        E = E * scale.reshape(shp)
    return E, O


def _unfold(plus, minus, n: int, axis: int):
    """Full axis of length n from values at the non-negative outputs (`plus`, ceil(n/2) of them, increasing)
    and at their mirrors (`minus`, same order)."""
    h = (n + 1) // 2
    lower = jax.lax.slice_in_dim(jnp.flip(minus, axis=axis), 0, n - h, axis=axis)
    return jnp.concatenate([lower, plus], axis=axis)


def _rdot(M, v, spec: str):
    """einsum of a real matrix M with a complex array v as real GEMMs on (re, im) stacked along a new axis."""
    vr = jnp.stack([v.real, v.imag], axis=-1)
    out = jnp.einsum(_spec_r(spec), M, vr, precision=HIGHEST)
    return jax.lax.complex(out[..., 0], out[..., 1])


def _spec_r(spec: str) -> str:
    ins, out = spec.split("->")
    a, b = ins.split(",")
    return f"{a},{b}r->{out}r"


def _symmetric_planes(V, x, y, wfun, qx, qy, dq, rows, checkpoint, minor):
    """Psi on a symmetric QGrid from planes V (ny, nx, K) with per-pixel plane weights wfun(dq) (..., K),
    dq = qz - q0 image (my, mx).

    Layout: every GEMM contracts the leading axis of a contiguous operand (no transposes of large arrays);
    the x stage runs over chunks of `rows` output columns (lax.map) to bound memory at large detectors.
    """
    ny, nx, K = V.shape
    mx, my = qx.shape[0], qy.shape[0]
    hx, hy = (nx + 1) // 2, (ny + 1) // 2
    hmx, hmy = (mx + 1) // 2, (my + 1) // 2
    xu, yu = x[nx - hx :], y[ny - hy :]
    qxu, qyu = qx[mx - hmx :], qy[my - hmy :]
    Cy, Sy = jnp.cos(qyu[:, None] * yu[None, :]), jnp.sin(qyu[:, None] * yu[None, :])  # (hmy, hy)
    Cx, Sx = jnp.cos(qxu[:, None] * xu[None, :]), jnp.sin(qxu[:, None] * xu[None, :])  # (hmx, hx)
    dqT = dq[my - hmy :, mx - hmx :].T  # quadrant qx, qy >= 0 as [qx, qy] (qz is even in both)

    Ey, Oy = _fold(V, axis=0)  # (hy, nx, K)
    ay_c = _rdot(Cy, Ey, "qj,jim->qim")  # (hmy, nx, K): y-cos part
    ay_s = _rdot(Sy, Oy, "qj,jim->qim")  # y-sin part
    parts = []
    for a in (ay_c, ay_s):
        ex, ox = _fold(a, axis=1)  # (hmy, hx, K)
        if minor:
            parts += [jnp.swapaxes(ex, 0, 1), jnp.swapaxes(ox, 0, 1)]  # (hx, hmy, K)
        else:
            parts += [jnp.transpose(ex, (1, 2, 0)), jnp.transpose(ox, (1, 2, 0))]  # (hx, K, hmy)
    # parts: y-cos/x-cos, y-cos/x-sin, y-sin/x-cos, y-sin/x-sin. Layout (i, plane, q, re/im): the GEMM
    # output (p, plane, q, re/im) is then reduced over planes along a non-minor axis, which XLA:CPU
    # vectorises over the contiguous (q, re/im) rows (4x faster than reducing a minor axis of size K).
    P = jnp.stack([jnp.stack([p.real, p.imag], axis=-1) for p in parts])  # (4, hx, K, hmy, 2)

    c = max(1, min(rows, hmx))
    nchunk = math.ceil(hmx / c)
    pad = nchunk * c - hmx
    CS = jnp.stack([Cx, Sx])  # (2, hmx, hx)
    if pad:
        CS = jnp.concatenate([CS, jnp.zeros((2, pad, hx), CS.dtype)], axis=1)
        dqT = jnp.concatenate([dqT, jnp.zeros((pad, hmy), dqT.dtype)], axis=0)
    CS = CS.reshape(2, nchunk, c, hx).swapaxes(0, 1)  # (nchunk, 2, c, hx)
    dqT = dqT.reshape(nchunk, c, hmy)

    def one(inp):
        cs, dqc = inp
        out = []
        if minor:
            w = wfun(dqc)
            for k in range(4):
                b = jnp.einsum("pi,iqmr->pqmr", cs[k % 2], P[k], precision=HIGHEST)
                out.append(_wsum(w, jax.lax.complex(b[..., 0], b[..., 1])))
            return jnp.stack(out)
        w = jnp.moveaxis(wfun(dqc), -1, 1)  # (c, K, hmy)
        for k in range(4):
            M = cs[k % 2]  # x-cos for parts 0, 2; x-sin for 1, 3
            b = jnp.einsum("pi,imqr->pmqr", M, P[k], precision=HIGHEST)  # (c, K, hmy, 2)
            if jnp.iscomplexobj(w):
                t = jnp.sum(w * jax.lax.complex(b[..., 0], b[..., 1]), axis=1)
            else:
                t = jnp.sum(w[..., None] * b, axis=1)
                t = jax.lax.complex(t[..., 0], t[..., 1])
            out.append(t)
        return jnp.stack(out)  # (4, c, hmy)

    if checkpoint:
        one = jax.checkpoint(one)
    T = jax.lax.map(one, (CS, dqT))  # (nchunk, 4, c, hmy)
    T = jnp.moveaxis(T, 1, 0).reshape(4, nchunk * c, hmy)[:, :hmx]
    Tcc, Tcs, Tsc, Tss = (t.T for t in T)  # [qy, qx]; T{y}{x}
    # Psi(sx qx, sy qy) = Tcc - i sx Tcs - i sy Tsc - sx sy Tss.
    pp = Tcc - 1j * Tcs - 1j * Tsc - Tss  # (+qx, +qy)
    pm = Tcc + 1j * Tcs - 1j * Tsc + Tss  # (-qx, +qy)
    mp = Tcc - 1j * Tcs + 1j * Tsc + Tss  # (+qx, -qy)
    mm = Tcc + 1j * Tcs + 1j * Tsc - Tss  # (-qx, -qy)
    top = _unfold(pp, pm, mx, axis=1)  # rows qy >= 0
    bottom = _unfold(mp, mm, mx, axis=1)  # rows qy < 0 (mirrors)
    return _unfold(top, bottom, my, axis=0)


def _wsum(w, b):
    """sum_k w[..., k] b[..., k] for complex b and real or complex weights w (real: two real reductions)."""
    if jnp.iscomplexobj(w):
        return jnp.sum(w * b, axis=-1)
    return jax.lax.complex(jnp.sum(w * b.real, axis=-1), jnp.sum(w * b.imag, axis=-1))


def _general_planes(V, x, y, wfun, qx, qy, dq, rows):
    """Psi for separable (not necessarily symmetric) axes: per plane two complex matmuls; V (nx, ny, K)."""
    nx, ny, K = V.shape
    Fx = jnp.exp(-1j * (qx[:, None] * x[None, :]))  # (mx, nx)
    Fy = jnp.exp(-1j * (qy[:, None] * y[None, :]))  # (my, ny)
    A = jnp.einsum("yj,ijm->yim", Fy, V, precision=HIGHEST)  # (my, nx, K)
    my = A.shape[0]
    c = max(1, min(rows, my))
    nchunk = math.ceil(my / c)
    pad = nchunk * c - my
    dqp = dq
    if pad:
        A = jnp.concatenate([A, jnp.zeros((pad,) + A.shape[1:], A.dtype)])
        dqp = jnp.concatenate([dq, jnp.zeros((pad, dq.shape[1]), dq.dtype)])

    def one(inp):
        a, d = inp
        b = jnp.einsum("yim,xi->yxm", a, Fx, precision=HIGHEST)
        return _wsum(wfun(d), b)

    out = jax.lax.map(one, (A.reshape(nchunk, c, nx, K), dqp.reshape(nchunk, c, -1)))
    return out.reshape(nchunk * c, -1)[:my]


def _direct_planes(V, x, y, wfun, qx, qy, dq, max_chunk_elements):
    """Psi_p for arbitrary pixels from K planes: per pixel chunk one matmul over x, then (y, plane)."""
    nx, ny, K = V.shape
    npix = qx.shape[0]
    chunk = max(1, min(npix, max_chunk_elements // (ny * K)))
    nchunk = math.ceil(npix / chunk)
    pad = nchunk * chunk - npix
    qs = jnp.stack([qx, qy, dq], axis=-1)
    if pad:
        qs = jnp.concatenate([qs, jnp.zeros((pad, 3), qs.dtype)], axis=0)
    qs = qs.reshape(nchunk, chunk, 3)
    V2 = V.reshape(nx, ny * K)

    @jax.checkpoint
    def one(qc):
        Ex = jnp.exp(-1j * (qc[:, 0:1] * x[None, :]))
        Ey = jnp.exp(-1j * (qc[:, 1:2] * y[None, :]))
        T = jnp.matmul(Ex, V2, precision=HIGHEST).reshape(chunk, ny, K)
        return _wsum(wfun(qc[:, 2]), jnp.einsum("pjs,pj->ps", T, Ey, precision=HIGHEST))

    return jax.lax.map(one, qs).reshape(-1)[:npix]


def compressed_far_field(
    U: Complex[Array, "nx ny nz"],
    grid: VoxelGrid,
    qx: Float[Array, "..."],
    qy: Float[Array, "..."],
    qz: Float[Array, "..."],
    qz_range: tuple[float, float],
    *,
    layout: str,
    tol: float | None = None,
    max_chunk_elements: int = 2**22,
) -> Complex[Array, "..."]:
    """Psi of eq. 9 with the slices compressed to Chebyshev planes (see the module docstring).

    **Arguments:**
    - `U`: weighted voxel sources from `slice_sources` (length^-1).
    - `grid`: the voxel grid (static, centred).
    - `qx`, `qy`, `qz`: inverse length. `layout="symmetric"` (QGrid: symmetric 1-D axes qx (mx,), qy (my,), qz
      (my, mx)), `"separable"` (any 1-D axes) or `"direct"` (qx, qy, qz all (p,) arbitrary pixels).
    - `qz_range`: static (lo, hi) that contains every qz (inverse length); checked at run time with
      `eqx.error_if` by the caller. Narrower is faster.
    - `tol`: absolute interpolation bound relative to sum |U|; default the dtype's epsilon (at least 1e-14).

    Returns Psi (length units) shaped like qz. Falls back to the exact slice sum (identity planes) when the
    compression would not reduce the number of slices.
    """
    if layout not in ("symmetric", "separable", "direct"):
        raise ValueError(f"layout must be 'symmetric', 'separable' or 'direct', got {layout!r}")
    lo, hi = (float(v) for v in qz_range)
    if not (math.isfinite(lo) and math.isfinite(hi) and hi >= lo):
        raise ValueError(f"qz_range must be finite (lo, hi) with hi >= lo, got {qz_range}")
    rdt = qz.dtype
    if tol is None:
        tol = max(float(jnp.finfo(rdt).eps), 1e-14)
    x, y, z = grid.axes(rdt)
    z_np = (np.arange(grid.shape[2]) - (grid.shape[2] - 1) / 2.0) * grid.pitch[2]
    q0 = 0.5 * (lo + hi)
    h = 0.5 * (hi - lo)
    C = chebyshev_planes(z_np, h, tol)
    Uc = U * jnp.exp(1j * (q0 * z)).astype(U.dtype)[None, None, :]
    if C is None:  # no gain: the plain slice sum, weights exp(i dq z_s)
        V = Uc

        def wfun(d):
            return jnp.exp(1j * (d[..., None] * z))

    else:
        V = jnp.einsum("ijs,sk->ijk", Uc, jnp.asarray(C, U.dtype), precision=HIGHEST)
        inv_h = 1.0 / h

        def wfun(d):
            return chebyshev_t(d * jnp.asarray(inv_h, rdt), C.shape[1])

    dq = qz - jnp.asarray(q0, rdt)
    if layout == "symmetric":
        K = V.shape[2]
        hmx, hmy = (qx.shape[0] + 1) // 2, (qy.shape[0] + 1) // 2
        # Output columns per chunk: keep the chunk's GEMM output (4 x rows x hmy x K complex) near 64 MB;
        # without checkpointing the gradient stores one phase array (hmx x hmy x K complex) in total.
        itemsize = jnp.dtype(U.dtype).itemsize
        rows = max(1, (2**26) // (4 * hmy * K * itemsize))
        checkpoint = hmx * hmy * K * itemsize > 2**30
        minor = _is_differentiated(U) if _PLANE_MINOR is None else _PLANE_MINOR
        return _symmetric_planes(jnp.swapaxes(V, 0, 1), x, y, wfun, qx, qy, dq, rows, checkpoint, minor)
    if layout == "separable":
        K = V.shape[2]
        itemsize = jnp.dtype(U.dtype).itemsize
        rows = max(1, (2**26) // (qx.shape[0] * K * itemsize))
        return _general_planes(V, x, y, wfun, qx, qy, dq, rows)
    return _direct_planes(V, x, y, wfun, qx, qy, dq, max_chunk_elements)
