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
    "network_loss",
    "NetworkPredictor",
    "load_network",
]

CLASSES = ("Sphere", "Ellipsoid", *POLYHEDRA)
NETWORK_CLASSES = CLASSES  # the name `fitting` exports
CANONICAL_THETA_MAX_DEG = 30.0
N_TWINS = 8


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
      comes from a second MLP that also sees the last layer's azimuth-resolved maps. Why (docs/network.md,
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

    `__call__(x)` on ONE image returns a dict: "log_size" () log of the volume-equivalent radius in
    wavelengths, "logits" (n_classes,), "log_axes" (2,) log(a / r_eq), log(c / r_eq) of the sorted
    semi-axes a <= b <= c (b = r_eq^3 / (a c)), "rot6d" (6,).
    """

    convs: tuple[eqx.nn.Conv2d, ...]
    head: eqx.nn.MLP
    orient_head: eqx.nn.MLP | None
    n_classes: int = eqx.field(static=True)
    polar: tuple[int, int] | None = eqx.field(static=True)
    harmonics: tuple[int, ...] = eqx.field(static=True)

    def __init__(
        self,
        key: PRNGKeyArray,
        n: int = 64,
        widths: tuple[int, ...] = (16, 32, 64, 64),
        hidden: int = 128,
        n_classes: int = len(CLASSES),
        polar: tuple[int, int] | None = None,
        harmonics: tuple[int, ...] = (2, 4, 6, 8),
    ):
        n, widths = int(n), tuple(int(w) for w in widths)
        f = 2 ** len(widths)
        keys = jax.random.split(key, len(widths) + 2)
        chans = (2, *widths)
        self.n_classes = int(n_classes)
        self.harmonics = tuple(sorted({int(m) for m in harmonics}))
        k = self.n_classes
        if polar is None:
            if n % f:
                raise ValueError(f"n must be a multiple of 2^len(widths) = {f}, got {n}")
            self.polar = None
            self.convs = tuple(
                eqx.nn.Conv2d(chans[i], chans[i + 1], 3, stride=2, padding=1, key=keys[i])
                for i in range(len(widths))
            )
            side = n // f
            self.head = eqx.nn.MLP(widths[-1] * side * side, 1 + k + 2 + 6, hidden, 2, key=keys[-2])
            self.orient_head = None
            return
        nr, nphi = (int(v) for v in polar)
        if nr % f or nphi % f or nr < f or nphi < f:
            raise ValueError(f"polar = (nr, nphi) must be multiples of 2^len(widths) = {f}, got {polar}")
        if any(m < 1 for m in self.harmonics):
            raise ValueError(f"harmonics must be azimuthal orders >= 1, got {harmonics}")
        self.polar = (nr, nphi)
        self.convs = tuple(
            eqx.nn.Conv2d(chans[i], chans[i + 1], 3, stride=2, padding=0, key=keys[i])
            for i in range(len(widths))
        )
        n_last = widths[-1] * (nr // f)
        n_inv = 2 * n_last + n_last * len(self._last_harmonics(nphi // f))
        for i in self._harmonic_layers():
            n_inv += widths[i] * (nr // 2 ** (i + 1)) * len(self._orders(nphi // 2 ** (i + 1)))
        self.head = eqx.nn.MLP(n_inv, 1 + k + 2, hidden, 2, key=keys[-2])
        self.orient_head = eqx.nn.MLP(
            n_last * (2 + len(self._last_harmonics(nphi // f)) + nphi // f), 6, hidden, 2, key=keys[-1]
        )

    def _harmonic_layers(self) -> range:
        return range(min(2, len(self.convs) - 1))

    def _orders(self, nphi_layer: int) -> tuple[int, ...]:
        """The azimuthal orders a layer with `nphi_layer` azimuths resolves (m <= nphi_layer / 2)."""
        return tuple(m for m in self.harmonics if m <= nphi_layer // 2)

    def _last_harmonics(self, nphi_layer: int) -> tuple[int, ...]:
        return tuple(m for m in self._orders(nphi_layer) if m <= 2)

    def __call__(self, x: Float[Array, "2 n n"]) -> dict:
        h = jnp.asarray(x, self.convs[0].weight.dtype)
        k = self.n_classes
        if self.polar is None:
            for c in self.convs:
                h = jax.nn.gelu(c(h))
            o = self.head(h.reshape(-1))
            rot6d = o[3 + k : 9 + k]
        else:
            h = polar_resample(h, *self.polar)
            harm = []
            for i, c in enumerate(self.convs):
                h = jnp.pad(h, ((0, 0), (1, 1), (0, 0)))  # radius: zeros
                h = jnp.concatenate([h[:, :, -1:], h, h[:, :, :1]], axis=-1)  # azimuth: circular
                h = jax.nn.gelu(c(h))
                orders = self._orders(h.shape[-1])
                if i in self._harmonic_layers() and orders:
                    amp = jnp.abs(jnp.fft.rfft(h, axis=-1))
                    harm.append(amp[..., jnp.asarray(orders)].reshape(-1))
            F = jnp.abs(jnp.fft.rfft(h, axis=-1))
            last = [jnp.mean(h, -1), jnp.max(h, -1)] + [F[..., m] for m in self._last_harmonics(h.shape[-1])]
            pooled = jnp.concatenate(last, 0).reshape(-1)
            o = self.head(jnp.concatenate([pooled, *harm]))
            rot6d = self.orient_head(jnp.concatenate([pooled, h.reshape(-1)]))
        return {
            "log_size": o[0] + 1.5,  # offset: log(4.5) ~ middle of 2-12 wavelengths
            "logits": o[1 : 1 + k],
            "log_axes": jnp.stack([-jax.nn.softplus(o[1 + k]), jax.nn.softplus(o[2 + k])]),
            "rot6d": rot6d,
        }


# ------------------------------------------------------------------------------------------------ loss

# proper diagonal symmetries of an ellipsoid body (det +1) and the improper ones (det -1)
_D_PROPER = np.array([np.diag(d) for d in ((1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1))], np.float32)
_D_IMPROPER = -_D_PROPER
_MZ = np.diag([1.0, 1.0, -1.0]).astype(np.float32)


def twin_rotations(rotation: Float[Array, "3 3"]) -> Float[Array, "8 3 3"]:
    """The 8 rotations that give (nearly) the same pattern as an ellipsoid at `rotation` (r_lab = R r_body):

    - body symmetry (axes sorted a <= b <= c, so no permutations): R D, D = diag(+-1, +-1, +-1), det D = 1;
    - the z-mirror twin (I(qx, qy, qz) ~ I(qx, qy, -qz) near the forward direction): the body mirrored in lab z
      is M R sigma with M = diag(1, 1, -1) and sigma a body mirror, i.e. M R D' with det D' = -1.
    The inversion twin r -> -r (Friedel: exact for real dn) leaves a centrosymmetric body unchanged
    (S(-R^T r) = S(R^T r)), so it adds no candidate; combined with the z-mirror it is the 180-deg turn about the
    beam, diag(-1, -1, 1) R, which equals M R D' (-M D'' with det D'' = 1), so it is in the set too. Used for ellipsoids; spheres carry no orientation, and the polyhedra's
    large rotation groups are not enumerated here (their orientation term is switched off, see docs).
    """
    R = jnp.asarray(rotation)
    hi = jax.lax.Precision.HIGHEST
    a = jnp.einsum("ij,kjl->kil", R, jnp.asarray(_D_PROPER), precision=hi)
    b = jnp.einsum("ij,jl,klm->kim", jnp.asarray(_MZ), R, jnp.asarray(_D_IMPROPER), precision=hi)
    return jnp.concatenate([a, b], 0)


def network_loss(
    out: dict,
    target: dict,
    weights: dict | None = None,
    reduce_twins: str = "min",
) -> tuple[Float[Array, ""], dict]:
    """Loss of ONE prediction `out` (from `InversionCNN`) against ONE `target`: dict with "log_size" (),
    "label" () int index into the class list, "log_axes" (2,), "rotation" (3, 3), "has_orientation" ()
    1.0 for shapes whose orientation is scored (ellipsoids), "has_axes" () likewise.

    Terms: size (log_size error)^2, cross-entropy, axes squared log error, and orientation
    ||R_pred - R_twin||_F^2 / 8 reduced over the 8 twins of `twin_rotations` by `reduce_twins`: "min"
    (the default, the twin-min loss) or "mean" (for comparison only: it rewards the twins' average).
    Returns (total, dict of the terms).
    """
    w = {"size": 1.0, "class": 0.3, "axes": 1.0, "orientation": 0.3} | (weights or {})
    size = (out["log_size"] - target["log_size"]) ** 2
    logp = jax.nn.log_softmax(out["logits"])
    ce = -jnp.take(logp, target["label"])
    axes = jnp.sum((out["log_axes"] - target["log_axes"]) ** 2) * target["has_axes"]
    Rp = rotation_from_6d(out["rot6d"])
    d = jnp.sum((twin_rotations(target["rotation"]) - Rp[None]) ** 2, axis=(-2, -1)) / 8.0
    if reduce_twins == "min":
        rot = jnp.min(d)
    elif reduce_twins == "mean":
        rot = jnp.mean(d)
    else:
        raise ValueError(f"reduce_twins must be 'min' or 'mean', got {reduce_twins!r}")
    rot = rot * target["has_orientation"]
    total = w["size"] * size + w["class"] * ce + w["axes"] * axes + w["orientation"] * rot
    return total, {"size": size, "class": ce, "axes": axes, "orientation": rot}


# ------------------------------------------------------------------------------------------- inference


def _shape_from(cls_name: str, r_eq: float, log_axes, R, delta: float, beta: float) -> ds.AbstractShape:
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
    "shape" (a diffscat shape of the predicted class with delta/beta from the training config, usable as a
    start for `fitting.fit`). `predict_batch(stack, experiment, mask)` does a whole (N, ny, nx) stack.
    """

    def __init__(self, model: InversionCNN, meta: dict):
        self.model = model
        self.meta = meta
        cfg = meta["config"]
        self.classes = tuple(cfg["classes"])
        self.n = int(cfg["network"]["n"])
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
        shape = _shape_from(cls_name, r_wl * lam, o["log_axes"][i], R, delta, beta)
        res = {
            "radius_eq": r_wl * lam,
            "size_wavelengths": r_wl,
            "class": cls_name,
            "class_probs": {c: float(pi) for c, pi in zip(self.classes, p)},
            "rotation": R,
            "shape": shape,
        }
        a, c = r_wl * math.exp(float(o["log_axes"][i][0])), r_wl * math.exp(float(o["log_axes"][i][1]))
        res["semi_axes"] = np.array([a, r_wl**3 / (a * c), c]) * lam
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
    if "train" in cfg and "loss_weights" not in cfg["train"]:  # the default before the polar layout
        cfg["train"]["loss_weights"] = {"size": 1.0, "class": 0.3, "axes": 1.0, "orientation": 0.3}
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
