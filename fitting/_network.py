"""An amortised-inversion network: one diffraction pattern -> shape parameters in milliseconds.

Three pieces, all pure and geometry-independent:

1. `CanonicalMap` / `canonical_input`: photon counts on any detector (QGrid, AngleGrid, FlatDetector) ->
   a (2, n, n) image on a canonical grid of the Lambert azimuthal equal-area coordinates
   u = (|q| / k0) (cos phi, sin phi), |u| <= u_max = 2 sin(theta_max / 2) (canonical theta_max = 30 deg).
   That projection preserves solid angle (area in u = solid angle in sr), so "counts per canonical bin"
   = (counts / pixel solid angle) x bin area is the same for every detector in expectation. Channel 0:
   log1p of those counts divided by its maximum; channel 1: the bin mask (1 = at least one used pixel
   reached it). Each detector pixel is splatted bilinearly onto its 4 nearest bins.
2. `InversionCNN`: a small equinox CNN (strided 3x3 convolutions + MLP head). Outputs: log of the
   volume-equivalent radius in wavelengths, class logits over `classes`, the two log axis ratios of an
   ellipsoid (semi-axes sorted ascending), and a 6-D rotation representation (Gram-Schmidt -> 3x3).
3. `network_loss`: size (squared log error), class cross-entropy, and an orientation term that takes the
   MINIMUM over the twin rotations of the truth (see `twin_rotations`), so the network is never pushed
   towards the average of two equally good answers.

Public here (re-exported by `fitting`): `CanonicalMap`, `canonical_input`, `InversionCNN`,
`rotation_from_6d`, `twin_rotations`, `network_loss`, `NetworkPredictor`, `load_network`, `CLASSES`.
"""

from __future__ import annotations

import functools
import json
import math
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

import diffscat as ds

from ._evalset import POLYHEDRA

__all__ = [
    "CLASSES",
    "NETWORK_CLASSES",
    "CanonicalMap",
    "canonical_input",
    "InversionCNN",
    "rotation_from_6d",
    "polar_resample",
    "twin_rotations",
    "twin_factors",
    "twin_table",
    "twin_bodies",
    "body_symmetries",
    "network_loss",
    "sh_twin_signs",
    "harmonics_from_relative",
    "NetworkPredictor",
    "load_network",
]

CLASSES = ("Sphere", "Ellipsoid", *POLYHEDRA, "SphericalHarmonics")
NETWORK_CLASSES = CLASSES  # the name `fitting` exports
# the scale of the raw coefficient outputs: relative coefficients c_lm / c_00 of droplets are a few 0.01
SH_OUTPUT_SCALE = 0.1


def sh_count(lmax: int) -> int:
    """Number of relative spherical-harmonic coefficients c_lm / c_00 the network predicts up to degree
    `lmax`: (lmax + 1)^2 - 1 (every (l, m) but c_00, the size); 0 for lmax 0."""
    return (int(lmax) + 1) ** 2 - 1 if int(lmax) > 0 else 0


def sh_twin_signs(lmax: int) -> np.ndarray:
    """(4, (lmax + 1)^2 - 1) sign vectors of the pattern twins of a LAB-frame harmonic body on its relative
    coefficients c_lm / c_00 (l >= 1, index l^2 + l + m - 1), as `fitting.harmonics_twins` at rotation
    identity: the body, its point inversion r -> -r ((-1)^l), its mirror in lab z ((-1)^(l + m)), both
    ((-1)^m). The network's harmonic loss takes the minimum over them."""
    L = int(lmax)
    l = np.concatenate([np.full(2 * k + 1, k) for k in range(1, L + 1)]) if L > 0 else np.zeros(0, int)
    m = np.concatenate([np.arange(-k, k + 1) for k in range(1, L + 1)]) if L > 0 else np.zeros(0, int)
    out = np.stack([np.ones_like(l), (-1.0) ** l, (-1.0) ** (l + m), (-1.0) ** m]).astype(np.float32)
    out.setflags(write=False)
    return out


CANONICAL_THETA_MAX_DEG = 30.0


# ----------------------------------------------------------------------------------------------- input


def _bilinear_taps(fx, fy, n: int, ok=None) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear taps of points at continuous bin coordinates (`fx`, `fy`) (bin centres at integers) on an
    (n, n) grid: (P, 4) flat bin indices (int32) and weights; taps off the grid, or of points where `ok` is
    False, get index 0 and weight 0."""
    x0, y0 = np.floor(fx).astype(np.int64), np.floor(fy).astype(np.int64)
    tx, ty = fx - x0, fy - y0
    ok = np.ones(np.shape(fx), bool) if ok is None else ok
    idx, wts = [], []
    for dy, wy in ((0, 1 - ty), (1, ty)):
        for dx, wx in ((0, 1 - tx), (1, tx)):
            ix, iy = x0 + dx, y0 + dy
            inside = (ix >= 0) & (ix < n) & (iy >= 0) & (iy < n) & ok
            idx.append(np.where(inside, iy * n + ix, 0))
            wts.append(np.where(inside, wx * wy, 0.0))
    return np.stack(idx, -1).astype(np.int32), np.stack(wts, -1)


class CanonicalMap(eqx.Module):
    """Where each detector pixel lands on the canonical (n, n) grid: 4 bilinear bin indices and weights.

    Built once per detector geometry from concrete values (`CanonicalMap.from_experiment`); applying it
    (`__call__`) is pure jnp and vmaps over patterns. Fields: `index` (npix, 4) flat bin indices,
    `weight` (npix, 4) bilinear weights (0 for pixels off the grid or invalid), `solid_angle` (npix,) sr,
    `n` (static) bins per side, `u_max` (static) half-width of the grid in |q| / k0.
    """

    index: Int[Array, "npix 4"]
    weight: Float[Array, "npix 4"]
    solid_angle: Float[Array, " npix"]
    image_shape: tuple[int, ...] = eqx.field(static=True)
    n: int = eqx.field(static=True)
    u_max: float = eqx.field(static=True)

    @classmethod
    def from_experiment(
        cls, experiment: ds.Experiment, n: int = 64, theta_max_deg: float = CANONICAL_THETA_MAX_DEG
    ) -> CanonicalMap:
        """The map for `experiment` (concrete geometry) onto an `n` x `n` grid covering scattering angles up
        to `theta_max_deg` [deg] along the axes (|q| / k0 <= 2 sin(theta_max / 2))."""
        if not isinstance(experiment, ds.Experiment):
            raise TypeError(f"experiment must be a diffscat.Experiment, got {type(experiment).__name__}")
        n = int(n)
        if n < 4:
            raise ValueError(f"n must be >= 4, got {n}")
        if not 0 < theta_max_deg < 180:
            raise ValueError(f"theta_max_deg must be in (0, 180), got {theta_max_deg}")
        u_max = 2.0 * math.sin(math.radians(theta_max_deg) / 2.0)
        pix = experiment.pixels()
        k0 = float(np.asarray(experiment.k0))
        q = np.asarray(pix.q(k0), np.float64).reshape(-1, 3)
        valid = np.asarray(pix.valid).reshape(-1)
        sa = np.asarray(pix.solid_angle, np.float64).reshape(-1)
        qa = np.linalg.norm(q, axis=-1) / k0
        phi = np.arctan2(q[:, 1], q[:, 0])
        ux, uy = qa * np.cos(phi), qa * np.sin(phi)
        du = 2.0 * u_max / n
        # continuous bin coordinates: bin centres at (i + 0.5) du - u_max
        fx, fy = (ux + u_max) / du - 0.5, (uy + u_max) / du - 0.5
        idx, wts = _bilinear_taps(fx, fy, n, valid & (sa > 0))
        return cls(
            index=jnp.asarray(idx),
            weight=jnp.asarray(wts, jnp.float32),
            solid_angle=jnp.asarray(np.where(valid, sa, 0.0), jnp.float32),
            image_shape=tuple(experiment.shape),
            n=n,
            u_max=float(u_max),
        )

    def __call__(self, counts: Float[Array, "*image"], mask: Array | None = None) -> Float[Array, "2 n n"]:
        """The (2, n, n) network input of one pattern of photon `counts` (image-shaped, the experiment's
        shape); `mask` True = used pixel (default all)."""
        if tuple(counts.shape) != self.image_shape:
            raise ValueError(f"counts must have the detector's shape {self.image_shape}, got {counts.shape}")
        c = jnp.asarray(counts, jnp.float32).reshape(-1)
        m = jnp.ones(c.shape, bool) if mask is None else jnp.asarray(mask, bool).reshape(-1)
        if m.shape != c.shape:
            raise ValueError(f"mask must have the detector's shape {self.image_shape}, got {jnp.shape(mask)}")
        ok = m & (self.solid_angle > 0)
        dens = jnp.where(ok, c / jnp.where(ok, self.solid_angle, 1.0), 0.0)  # photons / sr
        w = jnp.where(ok[:, None], self.weight, 0.0)
        nb = self.n * self.n
        wsum = jnp.zeros(nb, jnp.float32).at[self.index.reshape(-1)].add(w.reshape(-1))
        dsum = jnp.zeros(nb, jnp.float32).at[self.index.reshape(-1)].add((w * dens[:, None]).reshape(-1))
        used = wsum > 0
        # bins reached only by the far tails of a bilinear weight carry little information
        ref = jnp.max(wsum)
        used = used & (wsum > 0.05 * ref)
        bin_area = (2.0 * self.u_max / self.n) ** 2  # sr (equal-area projection)
        img = jnp.log1p(jnp.where(used, dsum / jnp.where(used, wsum, 1.0), 0.0) * bin_area)
        img = img / jnp.maximum(jnp.max(img), 1e-6)
        return jnp.stack([img.reshape(self.n, self.n), used.reshape(self.n, self.n).astype(jnp.float32)])


def canonical_input(
    counts, experiment: ds.Experiment, mask=None, n: int = 64, theta_max_deg: float = CANONICAL_THETA_MAX_DEG
) -> Float[Array, "2 n n"]:
    """One-shot `CanonicalMap.from_experiment(experiment, n, theta_max_deg)(counts, mask)`."""
    return CanonicalMap.from_experiment(experiment, n, theta_max_deg)(jnp.asarray(counts), mask)


# --------------------------------------------------------------------------------------------- network


def rotation_from_6d(x: Float[Array, "6"]) -> Float[Array, "3 3"]:
    """Zhou et al. (CVPR 2019) continuous 6-D representation -> rotation matrix: Gram-Schmidt on the two
    3-vectors; they become the first two COLUMNS of R (r_lab = R r_body)."""
    a, b = x[:3], x[3:]
    e1 = a / jnp.sqrt(jnp.sum(a * a) + 1e-12)
    b = b - jnp.sum(e1 * b) * e1
    e2 = b / jnp.sqrt(jnp.sum(b * b) + 1e-12)
    e3 = jnp.cross(e1, e2)
    return jnp.stack([e1, e2, e3], axis=-1)


@functools.lru_cache(maxsize=8)
def _polar_taps(n: int, nr: int, nphi: int) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear taps of the polar resampling of an (n, n) canonical image: (4, nr * nphi) flat pixel indices
    and weights. Radii (k + 0.5) / nr * r_max with r_max = the half-diagonal (n / sqrt 2 bins, so the corners
    count), azimuths 2 pi j / nphi, centred on u = 0 (bin coordinate n / 2 - 0.5); samples off the image get
    weight 0 (their mask is 0 too)."""
    r = (np.arange(nr) + 0.5) / nr * (n / math.sqrt(2.0))
    phi = np.arange(nphi) / nphi * 2.0 * np.pi
    fx = n / 2.0 - 0.5 + r[:, None] * np.cos(phi)[None]
    fy = n / 2.0 - 0.5 + r[:, None] * np.sin(phi)[None]
    idx, wts = _bilinear_taps(fx.reshape(-1), fy.reshape(-1), n)
    return idx.T.copy(), wts.T.astype(np.float32)


def polar_resample(x: Float[Array, "c n n"], nr: int, nphi: int) -> Float[Array, "c nr nphi"]:
    """The canonical image `x` on a polar grid (radius along axis 1, azimuth along axis 2, see `_polar_taps`):
    an in-plane rotation of the pattern becomes a circular shift along the azimuth axis."""
    n = x.shape[-1]
    idx, w = _polar_taps(int(n), int(nr), int(nphi))
    flat = x.reshape(x.shape[0], n * n)
    out = jnp.sum(flat[:, idx] * jnp.asarray(w, x.dtype)[None], axis=1)
    return out.reshape(x.shape[0], nr, nphi)


class InversionCNN(eqx.Module):
    """Small CNN on the (2, n, n) canonical image. Two input layouts (`polar`):

    - `polar = (nr, nphi)` (the default for new models): the image is resampled onto a polar grid
      (`polar_resample`) and the stride-2 3x3 convolutions pad circularly in azimuth, so an in-plane rotation
      of the pattern only shifts the feature maps along azimuth. Size, class and axes come from an MLP on
      features that do not change under that shift: the amplitudes |F_m| of the azimuthal orders m in
      `harmonics` (default 2, 4, 6, 8) of the first two layers' maps, and the mean, max (and |F_2|) over
      azimuth of the last layer's (`harmonics=()`: the mean and max alone, for comparison). The 6-D rotation
      comes from a second MLP (`orient_hidden` wide) that also sees the last layer's azimuth-resolved maps and,
      with `orient_orders`, the complex azimuthal Fourier coefficients F_m (real and imaginary parts, m in
      `orient_orders`) of the first two layers' maps, averaged over `orient_bins` radial bins (to keep the
      model small): their phases carry the in-plane angles of the
      streaks and anisotropies at full azimuthal resolution (the last layer has only nphi / 16 azimuths);
      without them the head did not fit the training set's polyhedron orientations (docs/network.md). Why (docs/network.md,
      section 2): the anisotropy of an ellipsoid or the 4-, 6-fold streaks of a polyhedron are even
      azimuthal harmonics of the rings (Friedel symmetry makes a centred pattern nearly centrosymmetric).
      Odd orders are left out because a beam-centre offset makes them: a network trained with all orders
      1..8 read the size from the m = 1 signature of the training patterns' centre offsets, and its size error
      on exactly centred patterns was 24 % (median, Mie spheres). On fixed pools of training patterns the
      Cartesian CNN memorised the sphere/ellipsoid labels without generalising (held-out accuracy 0.5 =
      chance), the polar CNN with harmonic features did not (`benchmarks/bench_network_layout.py`).
      `nr` and `nphi` must be multiples of 2^len(widths).
    - `polar = None`: Cartesian strided convolutions and one MLP for every output (models trained before
      the polar layout; `n` must be a multiple of 2^len(widths)).

    `radial_spectrum` = p > 0 (polar only; models since session 24): the size / class / axes head also sees
    the azimuth-averaged radial spectrum of the log image, zero-padded p times (`_radial_spectrum`), whose
    peak sits at the fringe frequency, proportional to the size.

    `__call__(x)` on ONE image returns a dict: "log_size" () log of the volume-equivalent radius in
    wavelengths, "logits" (n_classes,), "log_axes" (2,) log(a / r_eq), log(c / r_eq) of the sorted
    semi-axes a <= b <= c (b = r_eq^3 / (a c)), "rot6d" (6,), "sh" (n_sh,) the relative lab-frame
    spherical-harmonic coefficients c_lm / c_00 for l = 1 .. `sh_lmax` (index l^2 + l + m - 1; empty for
    `sh_lmax` 0, models before session 20), from the orientation head.
    """

    convs: tuple[eqx.nn.Conv2d, ...]
    head: eqx.nn.MLP
    orient_head: eqx.nn.MLP | None
    n_classes: int = eqx.field(static=True)
    polar: tuple[int, int] | None = eqx.field(static=True)
    harmonics: tuple[int, ...] = eqx.field(static=True)
    orient_orders: tuple[int, ...] = eqx.field(static=True, default=())
    orient_bins: int = eqx.field(static=True, default=0)
    n_sh: int = eqx.field(static=True, default=0)
    radial_spectrum: int = eqx.field(static=True, default=0)

    def __init__(
        self,
        key: PRNGKeyArray,
        n: int = 64,
        widths: tuple[int, ...] = (16, 32, 64, 64),
        hidden: int = 128,
        n_classes: int = len(CLASSES),
        polar: tuple[int, int] | None = None,
        harmonics: tuple[int, ...] = (2, 4, 6, 8),
        orient_orders: tuple[int, ...] = (),
        orient_hidden: int | None = None,
        orient_bins: int = 4,
        sh_lmax: int = 0,
        radial_spectrum: int = 0,
    ):
        n, widths = int(n), tuple(int(w) for w in widths)
        if int(radial_spectrum) < 0:
            raise ValueError(f"radial_spectrum must be >= 0 (0 = off), got {radial_spectrum}")
        self.radial_spectrum = int(radial_spectrum)
        if int(sh_lmax) < 0:
            raise ValueError(f"sh_lmax must be >= 0, got {sh_lmax}")
        self.n_sh = sh_count(sh_lmax)
        self.orient_orders = tuple(sorted({int(m) for m in orient_orders}))
        f = 2 ** len(widths)
        keys = jax.random.split(key, len(widths) + 2)
        chans = (2, *widths)
        self.n_classes = int(n_classes)
        self.harmonics = tuple(sorted({int(m) for m in harmonics}))
        k = self.n_classes
        if polar is None:
            if self.radial_spectrum:
                raise ValueError("radial_spectrum needs the polar layout (polar = (nr, nphi))")
            if n % f:
                raise ValueError(f"n must be a multiple of 2^len(widths) = {f}, got {n}")
            self.polar = None
            self.convs = tuple(
                eqx.nn.Conv2d(chans[i], chans[i + 1], 3, stride=2, padding=1, key=keys[i])
                for i in range(len(widths))
            )
            side = n // f
            self.head = eqx.nn.MLP(
                widths[-1] * side * side, 1 + k + 2 + 6 + self.n_sh, hidden, 2, key=keys[-2]
            )
            self.orient_head = None
            return
        nr, nphi = (int(v) for v in polar)
        if nr % f or nphi % f or nr < f or nphi < f:
            raise ValueError(f"polar = (nr, nphi) must be multiples of 2^len(widths) = {f}, got {polar}")
        if any(m < 1 for m in self.harmonics):
            raise ValueError(f"harmonics must be azimuthal orders >= 1, got {harmonics}")
        if any(m < 1 for m in self.orient_orders):
            raise ValueError(f"orient_orders must be azimuthal orders >= 1, got {orient_orders}")
        self.polar = (nr, nphi)
        self.convs = tuple(
            eqx.nn.Conv2d(chans[i], chans[i + 1], 3, stride=2, padding=0, key=keys[i])
            for i in range(len(widths))
        )
        self.orient_bins = int(orient_bins) if self.orient_orders else 0
        if self.orient_orders and (
            self.orient_bins < 1
            or any((nr // 2 ** (i + 1)) % self.orient_bins for i in self._harmonic_layers())
        ):
            raise ValueError(
                f"orient_bins must divide the radii of the first two layers ({nr // 2}, {nr // 4}), got {orient_bins}"
            )
        n_last = widths[-1] * (nr // f)
        n_inv = 2 * n_last + n_last * len(self._last_harmonics(nphi // f))
        for i in self._harmonic_layers():
            n_inv += widths[i] * (nr // 2 ** (i + 1)) * len(self._orders(nphi // 2 ** (i + 1)))
        if self.radial_spectrum:
            n_inv += self._spectrum_bins(nr)
        self.head = eqx.nn.MLP(n_inv, 1 + k + 2, hidden, 2, key=keys[-2])
        n_orient = n_last * (2 + len(self._last_harmonics(nphi // f)) + nphi // f)
        for i in self._harmonic_layers():
            nphi_i = nphi // 2 ** (i + 1)
            n_orient += 2 * widths[i] * self.orient_bins * len(self._orders(nphi_i, self.orient_orders))
        oh = hidden if orient_hidden is None else int(orient_hidden)
        # the 6-D rotation and the relative harmonic coefficients (lab frame: they turn with the pattern, so
        # they need the azimuth-resolved features as the rotation does)
        self.orient_head = eqx.nn.MLP(n_orient, 6 + self.n_sh, oh, 2, key=keys[-1])

    def _harmonic_layers(self) -> range:
        return range(min(2, len(self.convs) - 1))

    def _orders(self, nphi_layer: int, orders: tuple[int, ...] | None = None) -> tuple[int, ...]:
        """The azimuthal orders of `orders` (default `harmonics`) a layer with `nphi_layer` azimuths resolves
        (m <= nphi_layer / 2)."""
        return tuple(m for m in (self.harmonics if orders is None else orders) if m <= nphi_layer // 2)

    def _last_harmonics(self, nphi_layer: int) -> tuple[int, ...]:
        return tuple(m for m in self._orders(nphi_layer) if m <= 2)

    def _spectrum_bins(self, nr: int) -> int:
        return (self.radial_spectrum * nr) // 2  # rfft bins of the zero-padded line, DC left out

    def _radial_spectrum(self, p: Float[Array, "2 nr nphi"]) -> Float[Array, " bins"]:
        """The fringe-spacing feature: along each azimuth line of the polar image, the radial derivative of
        the log image (used samples only, de-meaned, Hann-windowed), zero-padded to `radial_spectrum` x nr and
        Fourier transformed; the magnitudes averaged over azimuth and normalised to mean 1. A beam-centre
        offset moves a ring by different amounts along different lines, which blurs an azimuthal mean of the
        profile but only changes the phase of each line's spectrum, so the peak (fringe frequency ~ size)
        stays sharp."""
        img, used = p[0], p[1] > 0.99
        ok = used[1:] & used[:-1]
        d = jnp.where(ok, img[1:] - img[:-1], 0.0)  # (nr - 1, nphi)
        cnt = jnp.maximum(jnp.sum(ok, 0), 1)
        d = jnp.where(ok, d - jnp.sum(d, 0) / cnt, 0.0)
        nr = p.shape[1]
        win = jnp.asarray(np.hanning(nr - 1), d.dtype)[:, None]
        S = jnp.abs(jnp.fft.rfft(d * win, n=self.radial_spectrum * nr, axis=0))[
            1 : 1 + self._spectrum_bins(nr)
        ]
        s = jnp.mean(S, -1)
        return s / (jnp.mean(s) + 1e-6)

    def __call__(self, x: Float[Array, "2 n n"]) -> dict:
        h = jnp.asarray(x, self.convs[0].weight.dtype)
        k = self.n_classes
        if self.polar is None:
            for c in self.convs:
                h = jax.nn.gelu(c(h))
            o = self.head(h.reshape(-1))
            rot6d = o[3 + k : 9 + k]
            sh = o[9 + k :]
        else:
            h = polar_resample(h, *self.polar)
            harm, phase = [], []
            if self.radial_spectrum:
                harm.append(self._radial_spectrum(h))
            for i, c in enumerate(self.convs):
                h = jnp.pad(h, ((0, 0), (1, 1), (0, 0)))  # radius: zeros
                h = jnp.concatenate([h[:, :, -1:], h, h[:, :, :1]], axis=-1)  # azimuth: circular
                h = jax.nn.gelu(c(h))
                if i not in self._harmonic_layers():
                    continue
                F = jnp.fft.rfft(h, axis=-1)
                orders = self._orders(h.shape[-1])
                if orders:
                    harm.append(jnp.abs(F[..., jnp.asarray(orders)]).reshape(-1))
                orders = self._orders(h.shape[-1], self.orient_orders)
                if orders:
                    G = F[..., jnp.asarray(orders)] / h.shape[-1]  # (channels, radii, orders)
                    G = G.reshape(G.shape[0], self.orient_bins, -1, G.shape[-1]).mean(2)  # radial bins
                    phase += [G.real.reshape(-1), G.imag.reshape(-1)]
            F = jnp.abs(jnp.fft.rfft(h, axis=-1))
            last = [jnp.mean(h, -1), jnp.max(h, -1)] + [F[..., m] for m in self._last_harmonics(h.shape[-1])]
            pooled = jnp.concatenate(last, 0).reshape(-1)
            o = self.head(jnp.concatenate([pooled, *harm]))
            ro = self.orient_head(jnp.concatenate([pooled, h.reshape(-1), *phase]))
            rot6d, sh = ro[:6], ro[6:]
        return {
            "log_size": o[0] + 1.5,  # offset: log(4.5) ~ middle of 2-12 wavelengths
            "logits": o[1 : 1 + k],
            "log_axes": jnp.stack([-jax.nn.softplus(o[1 + k]), jax.nn.softplus(o[2 + k])]),
            "rot6d": rot6d,
            "sh": SH_OUTPUT_SCALE * sh,
        }


# ------------------------------------------------------------------------------------------------ loss

# proper diagonal symmetries of an ellipsoid body (det +1) and the improper ones (det -1)
_D_PROPER = np.array([np.diag(d) for d in ((1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1))], np.float32)
_D_IMPROPER = -_D_PROPER
_LAB_TWINS = (np.eye(3), -np.eye(3), np.diag([1.0, 1.0, -1.0]), np.diag([-1.0, -1.0, 1.0]))


def _plane_symmetries(N: np.ndarray, d: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """Every orthogonal matrix g (proper and improper) that maps the set of planes {(n_f, d_f)} of a
    convex polyhedron onto itself: g sends a reference pair of non-parallel normals to every pair with the
    same distances and angle (2 handednesses), and is kept if all planes land on planes."""
    N = np.asarray(N, float)
    d = np.asarray(d, float) / np.max(np.abs(d))
    a = 0
    b = next(j for j in range(len(N)) if np.linalg.norm(np.cross(N[a], N[j])) > 0.1)
    A_inv = np.linalg.inv(np.stack([N[a], N[b], np.cross(N[a], N[b])], 1))
    out: list[np.ndarray] = []
    for i in np.flatnonzero(np.abs(d - d[a]) < tol):
        for j in np.flatnonzero((np.abs(d - d[b]) < tol) & (np.abs(N @ N[i] - N[a] @ N[b]) < tol)):
            for hand in (1.0, -1.0):
                g = np.stack([N[i], N[j], hand * np.cross(N[i], N[j])], 1) @ A_inv
                M = N @ g.T
                hit = (np.linalg.norm(M[:, None] - N[None], axis=-1) < 1e-5) & (
                    np.abs(d[:, None] - d[None]) < tol
                )
                if hit.any(axis=1).all() and not any(np.allclose(g, h, atol=1e-6) for h in out):
                    out.append(g)
    return np.array(out)


@functools.cache
def body_symmetries(class_name: str) -> np.ndarray:
    """(m, 3, 3) orthogonal matrices g, proper first then improper, with S(g r) = S(r) for the body of
    `class_name` in its own frame: the 8 sign flips of the axes for "Ellipsoid" (axes distinct), the
    point group of a polyhedron found from its face planes (Cube, Octahedron, TruncatedOctahedron,
    Cuboctahedron: O_h, 48; Icosahedron: I_h, 120; Decahedron: D_5h, 20), the identity for "Sphere" and
    "SphericalHarmonics" (no orientation to score: a harmonic body's lab-frame coefficients carry it)."""
    if class_name in ("Sphere", "SphericalHarmonics"):
        G = np.eye(3)[None]
    elif class_name == "Ellipsoid":
        G = np.concatenate([_D_PROPER, _D_IMPROPER]).astype(float)
    if class_name in ("Sphere", "Ellipsoid", "SphericalHarmonics"):
        G.setflags(write=False)
        return G
    if class_name not in POLYHEDRA:
        raise ValueError(
            f"class_name must be 'Sphere', 'Ellipsoid' or one of {POLYHEDRA}, got {class_name!r}"
        )
    body = getattr(ds, class_name)(1.0)
    planes = body.convex_planes() if hasattr(body, "convex_planes") else body.planes()
    G = _plane_symmetries(*(np.asarray(x, float) for x in planes))
    G = G[np.argsort(-np.linalg.det(G), kind="stable")]
    G.setflags(write=False)  # cached: shared by every caller
    return G


@functools.cache
def twin_factors(class_name: str) -> tuple[np.ndarray, np.ndarray]:
    """The pattern twins of a body of `class_name` as (L, g) pairs, (K, 3, 3) each: the rotations L R g
    (R: the body's rotation, r_lab = R r_body) give (nearly) the same pattern as R.

    L is one of the lab operations that leave the pattern (nearly) unchanged: identity, the point inversion
    r -> -r (Friedel: exact for real dn), the mirror in lab z (near the forward direction) and both (the
    180-deg turn about the beam); g is a body symmetry (`body_symmetries`) with det(L) det(g) = +1, so L R g
    is a proper rotation. (L, g) and (-L, -g) give the same rotation, so they are listed once; the
    identity pair comes first, the z-mirror ones (L = diag(1, 1, -1)) start at index K / 2 when the body is
    centrosymmetric. Ellipsoid: K = 8 (the order of `_D_PROPER`, then the z-mirror with `_D_IMPROPER`);
    O_h polyhedra: 48; icosahedron: 120; decahedron (no inversion centre): 40."""
    G = body_symmetries(class_name)
    R = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    R = R * np.sign(np.linalg.det(R))
    Ls, gs, seen = [], [], []
    for L in (_LAB_TWINS[0], _LAB_TWINS[2], _LAB_TWINS[1], _LAB_TWINS[3]):
        for g in G:
            if np.linalg.det(L) * np.linalg.det(g) < 0:
                continue
            T = L @ R @ g
            if any(np.allclose(T, u, atol=1e-6) for u in seen):
                continue
            seen.append(T)
            Ls.append(L)
            gs.append(g)
    out = np.array(Ls), np.array(gs)
    for a in out:
        a.setflags(write=False)  # cached: shared by every caller
    return out


def twin_table(classes: tuple[str, ...] | list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class of `classes`: (L, g, valid) padded to the largest twin count K: float32 (n, K, 3, 3) twice
    and (n, K) bool (padding repeats the first pair; `network_loss` masks it)."""
    facs = [twin_factors(c) for c in classes]
    K = max(len(L) for L, _ in facs)
    Ls = np.zeros((len(classes), K, 3, 3), np.float32)
    gs = np.zeros_like(Ls)
    valid = np.zeros((len(classes), K), bool)
    for i, (L, g) in enumerate(facs):
        k = len(L)
        Ls[i], gs[i] = L[0], g[0]
        Ls[i, :k], gs[i, :k] = L, g
        valid[i, :k] = True
    return Ls, gs, valid


def twin_rotations(rotation: Float[Array, "3 3"], class_name: str = "Ellipsoid") -> Float[Array, "k 3 3"]:
    """The K rotations that give (nearly) the same pattern as a body of `class_name` at `rotation`
    (r_lab = R r_body): L R g over the pairs of `twin_factors` (8 for an ellipsoid, 48 for the cubic
    polyhedra, 120 for the icosahedron, 40 for the decahedron).

    For the ellipsoid (axes sorted a <= b <= c, so no permutations): R D with D = diag(+-1, +-1, +-1),
    det D = 1 (body symmetry), then the z-mirror twin (I(qx, qy, qz) ~ I(qx, qy, -qz) near the forward
    direction) M R D' with M = diag(1, 1, -1), det D' = -1. The inversion twin r -> -r (Friedel: exact for
    real dn) maps a centrosymmetric body onto itself, so it adds no candidate there; combined with the
    z-mirror it is the 180-deg turn about the beam, diag(-1, -1, 1) R = M R (-1), in the set too. A body
    without an inversion centre (the decahedron) has the inverted body as another twin, -R g with g improper.
    """
    L, g = twin_factors(class_name)
    R = jnp.asarray(rotation)
    return _twin_product(jnp.asarray(L, R.dtype), R, jnp.asarray(g, R.dtype))


def _twin_product(L, R, g):
    """L_k R g_k for the (k, 3, 3) factors `L`, `g` of `twin_factors` (full-precision matmuls: no TF32)."""
    return jnp.einsum("kij,jl,klm->kim", L, R, g, precision=jax.lax.Precision.HIGHEST)


def twin_bodies(rotation, class_name: str) -> list[np.ndarray]:
    """The distinct BODIES among the twins of a body of `class_name` at `rotation` (`twin_rotations`): one
    rotation per lab operation L, since the twins with the same L differ by a body symmetry only. Two for a
    centrosymmetric body (R and its z-mirror image), four for the decahedron (also the point-inverted body
    and the 180-deg turn about the beam). These are the starts a fit must try: the network cannot tell them
    apart, the data (refraction, Ewald curvature) can, a little."""
    L, g = twin_factors(class_name)
    R = np.asarray(rotation, float)
    out, seen = [], []
    for Li, gi in zip(L, g, strict=True):
        if any(np.array_equal(Li, s) for s in seen):
            continue
        seen.append(Li)
        out.append(Li @ R @ gi)
    return out


def network_loss(
    out: dict,
    target: dict,
    weights: dict | None = None,
    reduce_twins: str = "min",
    twins: tuple | None = None,
) -> tuple[Float[Array, ""], dict]:
    """Loss of ONE prediction `out` (from `InversionCNN`) against ONE `target`: dict with "log_size" (),
    "label" () int index into the class list, "log_axes" (2,), "rotation" (3, 3), "has_orientation" ()
    1.0 for shapes whose orientation is scored, "has_axes" () 1.0 for shapes whose axes are scored, and
    optionally "sh" (n_sh,) the relative lab-frame coefficients c_lm / c_00 (l >= 1) with "has_sh" () 1.0
    for harmonic bodies (a model with `sh_lmax` 0 or a target without them: no harmonic term).

    Terms: size (log_size error)^2, cross-entropy, axes squared log error, harmonics
    min over the 4 pattern twins (`sh_twin_signs`) of sum (s c_pred - c_true)^2 (= the squared rms radius
    error over directions in units of the mean radius, the Y_lm being orthonormal), and orientation
    ||R_pred - R_twin||_F^2 / 8 (= sin^2 of half the angle between them) reduced over the twins of the truth
    by `reduce_twins`: "min" (the default, the twin-min loss) or "mean" (for comparison only: it rewards the
    twins' average). `twins`: the table `twin_table(classes)` (L, g, valid) of the class list the labels
    index: each class's own twins (`twin_rotations(R, class)`); None: the ellipsoid's 8 for every label
    (models trained before polyhedron orientations). Returns (total, dict of the terms).
    """
    w = {"size": 1.0, "class": 0.3, "axes": 1.0, "orientation": 0.3} | (weights or {})
    size = (out["log_size"] - target["log_size"]) ** 2
    logp = jax.nn.log_softmax(out["logits"])
    ce = -jnp.take(logp, target["label"])
    axes = jnp.sum((out["log_axes"] - target["log_axes"]) ** 2) * target["has_axes"]
    Rp = rotation_from_6d(out["rot6d"])
    R = target["rotation"]
    if twins is None:
        tw = twin_rotations(R)
        valid = jnp.ones(tw.shape[0], bool)
    else:
        L = jnp.asarray(twins[0])[target["label"]]
        g = jnp.asarray(twins[1])[target["label"]]
        valid = jnp.asarray(twins[2])[target["label"]]
        tw = _twin_product(L, R, g)
    d = jnp.sum((tw - Rp[None]) ** 2, axis=(-2, -1)) / 8.0
    if reduce_twins == "min":
        rot = jnp.min(jnp.where(valid, d, jnp.inf))
    elif reduce_twins == "mean":
        rot = jnp.sum(jnp.where(valid, d, 0.0)) / jnp.sum(valid)
    else:
        raise ValueError(f"reduce_twins must be 'min' or 'mean', got {reduce_twins!r}")
    rot = rot * target["has_orientation"]
    total = w["size"] * size + w["class"] * ce + w["axes"] * axes + w["orientation"] * rot
    terms = {"size": size, "class": ce, "axes": axes, "orientation": rot}
    n_sh = out["sh"].shape[-1] if "sh" in out else 0
    if n_sh and "sh" in target:
        if target["sh"].shape[-1] != n_sh:
            raise ValueError(
                f"target sh has {target['sh'].shape[-1]} coefficients, the model predicts {n_sh}"
            )
        L = math.isqrt(n_sh + 1) - 1
        signs = jnp.asarray(sh_twin_signs(L), out["sh"].dtype)
        err = jnp.sum((signs * out["sh"][None] - target["sh"][None]) ** 2, axis=-1)
        sh = jnp.min(err) * target["has_sh"]
        total = total + w.get("harmonics", 1.0) * sh
        terms["harmonics"] = sh
    return total, terms


# ------------------------------------------------------------------------------------------- inference


def harmonics_from_relative(relative, r_eq: float) -> np.ndarray:
    """Full coefficients ((lmax + 1)^2,) [length] of the harmonic body with relative lab-frame coefficients
    `relative` = c_lm / c_00 (l >= 1, as the network predicts them) and volume-equivalent radius `r_eq`
    [length]: c_00 is set by the body's volume (computed by `diffscat.SphericalHarmonics.volume`)."""
    rel = np.asarray(relative, np.float64).reshape(-1)
    if math.isqrt(rel.size + 1) ** 2 != rel.size + 1:
        raise ValueError(f"relative must hold (lmax + 1)^2 - 1 coefficients, got {rel.size}")
    c = np.concatenate([[1.0], rel])
    v1 = float(np.asarray(ds.SphericalHarmonics(c).volume()))
    return c * (4.0 / 3.0 * math.pi * float(r_eq) ** 3 / v1) ** (1.0 / 3.0)


def _shape_from(
    cls_name: str, r_eq: float, log_axes, R, delta: float, beta: float, coefficients=None
) -> ds.AbstractShape:
    if cls_name == "SphericalHarmonics":
        return ds.SphericalHarmonics(coefficients, delta, beta)
    if cls_name == "Sphere":
        return ds.Sphere(r_eq, delta, beta)
    if cls_name == "Ellipsoid":
        a, c = r_eq * math.exp(float(log_axes[0])), r_eq * math.exp(float(log_axes[1]))
        b = r_eq**3 / (a * c)
        return ds.Ellipsoid(np.array([a, b, c]), delta, beta, rotation=np.asarray(R))
    unit = float(np.asarray(getattr(ds, cls_name)(1.0).volume()))
    edge = (4.0 / 3.0 * math.pi * r_eq**3 / unit) ** (1 / 3)
    return getattr(ds, cls_name)(edge, delta=delta, beta=beta, rotation=np.asarray(R))


class NetworkPredictor:
    """A trained `InversionCNN` with its settings (`load_network(path)` builds one).

    `predict(data, experiment, mask=None)` -> dict: "radius_eq" (experiment length unit), "size_wavelengths",
    "class", "class_probs" {name: p}, "semi_axes" (length unit, sorted; ellipsoids), "rotation" (3, 3),
    "oriented_classes" (the classes whose rotation the model was trained on; others' is not meaningful),
    "shape" (a diffscat shape of the predicted class with delta/beta from the training config, usable as a
    start for `fitting.fit`); models with a harmonic head (`sh_lmax` > 0) also "sh_relative" (n_sh,) the
    relative lab-frame coefficients c_lm / c_00 (l >= 1) and "coefficients" ((lmax + 1)^2,) the full ones in
    the length unit (volume-equivalent radius "radius_eq"; identity rotation), meaningful when the body is
    harmonic. `predict_batch(stack, experiment, mask)` does a whole (N, ny, nx) stack.
    """

    def __init__(self, model: InversionCNN, meta: dict):
        self.model = model
        self.meta = meta
        cfg = meta["config"]
        self.classes = tuple(cfg["classes"])
        self.n = int(cfg["network"]["n"])
        # classes whose orientation the model was trained to predict (older models: the ellipsoid only)
        if cfg.get("train", {}).get("orientation_classes", "ellipsoid") == "all":
            self.oriented_classes = tuple(c for c in self.classes if c == "Ellipsoid" or c in POLYHEDRA)
        else:
            self.oriented_classes = ("Ellipsoid",) if "Ellipsoid" in self.classes else ()
        self._maps: dict = {}
        self._apply = eqx.filter_jit(lambda m, cmap, c, k: jax.vmap(lambda ci, ki: m(cmap(ci, ki)))(c, k))

    def _map(self, experiment: ds.Experiment) -> CanonicalMap:
        key = (experiment.detector, float(np.asarray(experiment.wavelength)))
        try:
            return self._maps[key]
        except TypeError:  # unhashable detector leaves
            return CanonicalMap.from_experiment(experiment, self.n)
        except KeyError:
            self._maps[key] = CanonicalMap.from_experiment(experiment, self.n)
            return self._maps[key]

    def raw(self, data, experiment: ds.Experiment, mask=None) -> dict:
        """Network outputs for a stack (N, *image) of counts (or one image), as NumPy arrays."""
        d = np.asarray(data, np.float32)
        if d.ndim == len(experiment.shape):
            d = d[None]
        if mask is None:
            m = np.ones(d.shape, bool)
        else:
            m = np.broadcast_to(np.asarray(mask, bool), d.shape)
        out = self._apply(self.model, self._map(experiment), jnp.asarray(d), jnp.asarray(m))
        return {k: np.asarray(v) for k, v in out.items()}

    def _decode(self, o: dict, i: int, lam: float) -> dict:
        cfg = self.meta["config"]
        p = np.exp(o["logits"][i] - o["logits"][i].max())
        p = p / p.sum()
        cls_name = self.classes[int(np.argmax(p))]
        r_wl = float(np.exp(o["log_size"][i]))
        R = np.asarray(rotation_from_6d(jnp.asarray(o["rot6d"][i])))
        delta, beta = float(np.mean(cfg["data"]["delta_range"])), float(np.mean(cfg["data"]["beta_range"]))
        sh = o["sh"][i] if "sh" in o and o["sh"].shape[-1] else None
        if cls_name == "SphericalHarmonics" and sh is None:
            raise ValueError("the model classifies SphericalHarmonics but predicts no coefficients")
        coef = None if sh is None else harmonics_from_relative(sh, r_wl * lam)
        shape = _shape_from(cls_name, r_wl * lam, o["log_axes"][i], R, delta, beta, coef)
        res = {
            "radius_eq": r_wl * lam,
            "size_wavelengths": r_wl,
            "class": cls_name,
            "class_probs": {c: float(pi) for c, pi in zip(self.classes, p)},
            "rotation": R,
            "oriented_classes": self.oriented_classes,
            "shape": shape,
        }
        a, c = r_wl * math.exp(float(o["log_axes"][i][0])), r_wl * math.exp(float(o["log_axes"][i][1]))
        res["semi_axes"] = np.array([a, r_wl**3 / (a * c), c]) * lam
        if sh is not None:  # meaningful for the harmonic class (the head is trained on harmonic bodies only)
            res["sh_relative"] = np.asarray(sh, np.float64)
            res["coefficients"] = coef
        return res

    def predict(self, data, experiment: ds.Experiment, mask=None) -> dict:
        """Parameters and a start shape for ONE pattern of photon counts (see the class docstring)."""
        d = np.asarray(data)
        if d.shape != tuple(experiment.shape):
            raise ValueError(f"data must have the detector's shape {experiment.shape}, got {d.shape}")
        o = self.raw(d, experiment, mask)
        return self._decode(o, 0, float(np.asarray(experiment.wavelength)))

    def predict_batch(self, data, experiment: ds.Experiment, mask=None) -> list[dict]:
        o = self.raw(data, experiment, mask)
        lam = float(np.asarray(experiment.wavelength))
        return [self._decode(o, i, lam) for i in range(len(o["log_size"]))]


def build_model(config: dict, key: PRNGKeyArray) -> InversionCNN:
    """The untrained model of a training config (its [network] section and class list)."""
    net = config["network"]
    layout = net.get("input", "cartesian")  # configs that predate the key: the Cartesian layout
    if layout not in ("cartesian", "polar"):
        raise ValueError(f"network.input must be 'cartesian' or 'polar', got {layout!r}")
    polar = tuple(int(v) for v in net.get("polar", (48, 64))) if layout == "polar" else None
    return InversionCNN(
        key,
        n=net["n"],
        widths=tuple(net["widths"]),
        hidden=net["hidden"],
        n_classes=len(config["classes"]),
        polar=polar,
        harmonics=tuple(int(m) for m in net.get("harmonics", (2, 4, 6, 8))),
        orient_orders=tuple(int(m) for m in net.get("orient_orders", ())),
        orient_hidden=int(net.get("orient_hidden", net["hidden"])),
        orient_bins=int(net.get("orient_bins", 4)),
        sh_lmax=int(net.get("sh_lmax", 0)),
        radial_spectrum=int(net.get("radial_spectrum", 0)),
    )


def read_sidecar(path) -> dict:
    """The JSON sidecar of model file `path`, its config completed by `sidecar_config`."""
    with open(sidecar_path(path)) as f:
        meta = json.load(f)
    meta["config"] = sidecar_config(meta["config"])  # keys older sidecars lack: what they were trained with
    return meta


def sidecar_config(config: dict) -> dict:
    """The config of a model's sidecar with the keys that older sidecars lack set to what THEY were trained
    with (not to today's defaults): a network table without "input" is the Cartesian layout."""
    cfg = json.loads(json.dumps(config))
    if "network" in cfg and "input" not in cfg["network"]:
        cfg["network"]["input"] = "cartesian"
    if "network" in cfg and "orient_orders" not in cfg["network"]:  # before the Fourier orientation head
        cfg["network"]["orient_orders"] = []
        cfg["network"]["orient_hidden"] = cfg["network"].get("hidden", 128)
    if "train" in cfg and "loss_weights" not in cfg["train"]:  # the default before the polar layout
        cfg["train"]["loss_weights"] = {"size": 1.0, "class": 0.3, "axes": 1.0, "orientation": 0.3}
    if "train" in cfg and "orientation_classes" not in cfg["train"]:  # before polyhedron orientations
        cfg["train"]["orientation_classes"] = "ellipsoid"
    if "network" in cfg and "sh_lmax" not in cfg["network"]:  # before the harmonic head (session 20)
        cfg["network"]["sh_lmax"] = 0
    if "train" in cfg and "harmonics" not in cfg["train"].get("loss_weights", {}):
        cfg["train"].setdefault("loss_weights", {})["harmonics"] = 0.0
    return cfg


def sidecar_path(path) -> str:
    return os.fspath(path) + ".json"


DEFAULT_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models", "default.eqx")
_LOADED: dict = {}


def load_network(path) -> NetworkPredictor:
    """Load a model written by `diffscat train` (`path`: the .eqx file; its JSON sidecar `path.json` holds the
    config). Deserialises leaves into a freshly built model of the same config (never pickle).

    `path="default"` loads the shipped model, `fitting/models/default.eqx` (trained by `make model` from
    configs/train-shipped.toml; see docs/network.md for its accuracy). A file is read once per process and
    version (its modification time)."""
    if isinstance(path, str) and path == "default":
        if not os.path.exists(DEFAULT_MODEL):
            raise FileNotFoundError(
                f"the shipped model {DEFAULT_MODEL} is missing (an incomplete install?); `make model` retrains it"
            )
        return load_network(DEFAULT_MODEL)
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such model file: {path}")
    key = (path, os.stat(path).st_mtime_ns)  # a rewritten file (retraining) is read again
    if key not in _LOADED:
        _LOADED[key] = _read_network(path)
    return _LOADED[key]


def _read_network(path: str) -> NetworkPredictor:
    side = sidecar_path(path)
    if not os.path.exists(side):
        raise FileNotFoundError(f"model {path} has no provenance sidecar {side}")
    meta = read_sidecar(path)
    template = build_model(meta["config"], jax.random.PRNGKey(0))
    # the file keeps the dtype it was trained in (float32, or float64 under jax_enable_x64): try both
    for dt in (jnp.float32, jnp.float64):
        like = jax.tree.map(lambda x, dt=dt: x.astype(dt) if eqx.is_inexact_array(x) else x, template)
        try:
            with open(path, "rb") as f:
                model = eqx.tree_deserialise_leaves(f, like)
            break
        except RuntimeError as e:
            if "dtype" not in str(e) or dt is jnp.float64:
                raise
    return NetworkPredictor(model, meta)
