"""Independent reference computations for tests: discrete eq. 9 in float64 NumPy, analytic Born form
factors on the Ewald sphere, and Mie profiles (miepython). Written from docs/conventions.md, not from diffscat.
"""

from __future__ import annotations

import numpy as np


def eq9_numpy(dn, pitch, wavelength, theta, phi, method="msft"):
    """Discrete eq. 9 by brute force in float64/complex128 (tiny volumes only).

    dn: (nx, ny, nz) complex n - 1 on voxel centres, array centred on the origin, beam along the last axis.
    Returns Psi at the directions (theta, phi) (any equal shapes).
    """
    dn = np.asarray(dn, dtype=np.complex128)
    nx, ny, nz = dn.shape
    dx, dy, dz = pitch
    k0 = 2 * np.pi / wavelength
    x = (np.arange(nx) - (nx - 1) / 2) * dx
    y = (np.arange(ny) - (ny - 1) / 2) * dy
    z = (np.arange(nz) - (nz - 1) / 2) * dz
    theta = np.asarray(theta, dtype=float)
    phi = np.asarray(phi, dtype=float)
    qx = k0 * np.sin(theta) * np.cos(phi)
    qy = k0 * np.sin(theta) * np.sin(phi)
    qz = k0 * (1 - np.cos(theta))
    psi = np.zeros(theta.shape, np.complex128)
    E = np.ones((nx, ny), np.complex128)
    for s in range(nz):
        S = k0**2 / (4 * np.pi) * ((1 + dn[:, :, s]) ** 2 - 1) * dz
        src = S * (E if method == "msft" else 1.0)
        # sum_ij src_ij exp(-i (qx x_i + qy y_j))
        ph = np.exp(-1j * (qx[..., None, None] * x[:, None] + qy[..., None, None] * y[None, :]))
        psi += dx * dy * np.exp(1j * qz * z[s]) * np.sum(src * ph, axis=(-2, -1))
        E = E * np.exp(1j * k0 * dz * dn[:, :, s])
    return psi


def sphere_amplitude(u):
    u = np.asarray(u, dtype=float)
    out = np.ones_like(u)
    m = u > 1e-6
    um = u[m]
    out[m] = 3 * (np.sin(um) - um * np.cos(um)) / um**3
    return out


def born_ellipsoid(semi_axes, R, dn, wavelength, theta, phi, mirror=False):
    """Analytic first-Born dsigma/dOmega of a uniform ellipsoid on the Ewald sphere.

    q = (qx, qy, -qz) (docs/conventions.md); u = |diag(a, b, c) R^T q|. `mirror=True` uses +qz (the wrong sign).
    """
    k0 = 2 * np.pi / wavelength
    theta = np.asarray(theta, float)
    phi = np.asarray(phi, float)
    sgn = 1.0 if mirror else -1.0
    q = np.stack(
        [
            k0 * np.sin(theta) * np.cos(phi),
            k0 * np.sin(theta) * np.sin(phi),
            sgn * k0 * (1 - np.cos(theta)),
        ],
        axis=-1,
    )
    qb = q @ np.asarray(R, float)  # body-frame components R^T q
    u = np.linalg.norm(qb * np.asarray(semi_axes, float), axis=-1)
    V = 4 / 3 * np.pi * np.prod(semi_axes)
    amp = k0**2 / (4 * np.pi) * ((1 + dn) ** 2 - 1) * V * sphere_amplitude(u)
    return np.abs(amp) ** 2


def mie_dcs(radius, delta, beta, wavelength, theta, polarisation="perpendicular"):
    """Mie dsigma/dOmega (length^2/sr) at angles theta: |S1|^2 / k0^2 (perpendicular) or unpolarised."""
    import miepython

    k0 = 2 * np.pi / wavelength
    m = complex(1 - delta, beta)
    theta = np.asarray(theta, float)
    # Exact series on a fine 1-D grid (0.005 deg), then linear interpolation to the pixels.
    fine = np.linspace(theta.min(), theta.max(), max(2, int(np.ptp(theta) / np.radians(0.005)) + 2))
    s1, s2 = miepython.S1_S2(m, k0 * radius, np.cos(fine), norm="wiscombe")
    if polarisation == "perpendicular":
        v = np.abs(s1) ** 2
    elif polarisation == "parallel":
        v = np.abs(s2) ** 2
    else:
        v = (np.abs(s1) ** 2 + np.abs(s2) ** 2) / 2
    return np.interp(theta, fine, v / k0**2)


def radial_profile(image, theta, bins):
    """Azimuthal mean of `image` in theta bins (radians); returns (bin centres, means)."""
    image = np.asarray(image).ravel()
    theta = np.asarray(theta).ravel()
    idx = np.digitize(theta, bins) - 1
    n = len(bins) - 1
    sums = np.bincount(idx[(idx >= 0) & (idx < n)], image[(idx >= 0) & (idx < n)], minlength=n)
    cnt = np.bincount(idx[(idx >= 0) & (idx < n)], minlength=n)
    return 0.5 * (bins[1:] + bins[:-1]), sums / np.maximum(cnt, 1)


def rel_l2(a, b):
    a = np.asarray(a, float)
    b = np.asarray(b, float)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# --- shape library (issue: shape library) ------------------------------------------------------------


def _q_physical(wavelength, theta, phi):
    """Physical momentum transfer q = k_out - k_in = (qx, qy, -qz), shape (..., 3)."""
    k0 = 2 * np.pi / wavelength
    theta = np.asarray(theta, float)
    phi = np.asarray(phi, float)
    return np.stack(
        [k0 * np.sin(theta) * np.cos(phi), k0 * np.sin(theta) * np.sin(phi), -k0 * (1 - np.cos(theta))],
        axis=-1,
    )


def born_cube(edge, R, dn, wavelength, theta, phi):
    """Analytic first-Born dsigma/dOmega of a uniform cube of `edge` with body axes R (r_lab = R r_body):
    amplitude k0^2/(4 pi) ((1+dn)^2 - 1) edge^3 prod_i sinc(q_i edge / 2), q_body = R^T q."""
    k0 = 2 * np.pi / wavelength
    qb = _q_physical(wavelength, theta, phi) @ np.asarray(R, float)
    f = np.prod(np.sinc(qb * edge / (2 * np.pi)), axis=-1)  # np.sinc(x) = sin(pi x) / (pi x)
    amp = k0**2 / (4 * np.pi) * ((1 + dn) ** 2 - 1) * edge**3 * f
    return np.abs(amp) ** 2


def born_core_shell(r_core, r_shell, dn_core, dn_shell, wavelength, theta, phi):
    """Analytic first-Born dsigma/dOmega of concentric spheres: shell material out to r_shell, core material
    inside r_core; the amplitude is the shell sphere's plus the core sphere's with the contrast
    S(dn_core) - S(dn_shell), S(dn) = (1 + dn)^2 - 1."""
    k0 = 2 * np.pi / wavelength
    q = np.linalg.norm(_q_physical(wavelength, theta, phi), axis=-1)
    S = lambda dn: (1 + dn) ** 2 - 1
    Vs, Vc = 4 / 3 * np.pi * r_shell**3, 4 / 3 * np.pi * r_core**3
    amp = S(dn_shell) * Vs * sphere_amplitude(q * r_shell) + (
        S(dn_core) - S(dn_shell)
    ) * Vc * sphere_amplitude(q * r_core)
    return np.abs(k0**2 / (4 * np.pi) * amp) ** 2


# --- propagating multislice (method="propagating") -----------------------------------------------------


def bpm_envelope_numpy(dn, pitch, wavelength, pad, wide_angle=True):
    """Total-field envelope entering each slice by the wide-angle split-step recursion, float64 NumPy loop.

    Written from the recursion in diffscat/engines/_propagate.py's docstring: W = E - 1 on a grid padded by
    `pad` voxels each side (then to the same FFT size, given as pad = (NX, NY) padded sizes here),
    W <- M ifft2[P (fft2 W + c fft2((exp(i k0 dz dn) - 1)(1 + W)))], c = k0/kz capped at 2, 1 if evanescent,
    M the cos^2 absorbing mask over the padding (1 over the grid and a guard band of a quarter of the room).
    """
    dn = np.asarray(dn, np.complex128)
    nx, ny, nz = dn.shape
    dx, dy, dz = pitch
    k0 = 2 * np.pi / wavelength
    NX, NY = pad

    def axis(n, N, d):
        lo = (N - n) // 2
        i = np.arange(N)
        dist = np.maximum(np.maximum(lo - i, i - (lo + n - 1)), 0)
        room = min(lo, N - lo - n)
        t = np.clip((dist - room // 4) / max(1, room - room // 4), 0, 1)
        return lo, 2 * np.pi * np.fft.fftfreq(N, d), np.cos(np.pi / 2 * t) ** 2

    lox, kx, mx = axis(nx, NX, dx)
    loy, ky, my = axis(ny, NY, dy)
    kp2 = kx[:, None] ** 2 + ky[None, :] ** 2
    kz = np.sqrt((k0**2 - kp2).astype(np.complex128))
    P = np.exp(1j * (kz - k0) * dz)
    c = np.where(k0**2 - kp2 > 0, k0 / np.maximum(kz.real, 0.5 * k0), 1.0) if wide_angle else 1.0
    M = mx[:, None] * my[None, :]
    W = np.zeros((NX, NY), np.complex128)
    out = np.zeros_like(dn)
    for s in range(nz):
        E = 1 + W[lox : lox + nx, loy : loy + ny]
        out[:, :, s] = E
        src = np.zeros_like(W)
        src[lox : lox + nx, loy : loy + ny] = (np.exp(1j * k0 * dz * dn[:, :, s]) - 1) * E
        W = M * np.fft.ifft2(P * (np.fft.fft2(W) + c * np.fft.fft2(src)))
    return out
