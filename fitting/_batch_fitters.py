"""Vmappable per-pattern fitters for batch inversion (`fitting.batch_fit`).

A batch fitter is a callable `(data[B, ny, nx], mask[B, ny, nx]) -> {name: (B,) array}` built once per dataset
geometry. Everything per pattern (automatic initialisation, the optimisation, the uncertainty) is pure JAX with a
fixed number of steps, so a whole chunk is one `jit(vmap(...))` call whose batch axis can be sharded over devices.

`SphereBatchFitter`: a sphere's MSFT pattern is symmetric about the beam axis (so is the propagation through it),
so the model is the exact eq. 9 evaluated on a fine 1-D fan of angles and interpolated to the pixels' theta; the
radius is initialised by a scan over precomputed candidate profiles (shared by all patterns), then refined by
damped Newton steps on log(radius) with the configured likelihood (Poisson by default) and the fluence profiled
out; sigma from the curvature.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

import diffscat as ds
from diffscat._custom_types import mm
from diffscat._preflight import check_memory

from ._losses import AbstractLoss, as_loss

__all__ = ["SphereBatchFitter"]


_KNOBS = "a smaller [model] radius_max, a coarser [fit] pitch, or a smaller [batch] chunk_size"


class SphereBatchFitter:
    """Per-pattern sphere fit (radius and fluence scale) for a fixed experiment.

    **Arguments:**
    - `experiment`: the dataset's geometry (any detector).
    - `delta`, `beta`: optical constants of the spheres (fixed).
    - `radius_range`: (min, max) radius searched by the initial scan, length unit.
    - `n_candidates`: radii in the scan (geometric spacing; the fringe basin of a radius is ~ +-5 %, so keep
      the ratio max/min below ~1.04 ** n_candidates).
    - `n_steps`: Newton steps of the refinement (each clipped to 2 % of the radius).
    - `n_theta`: angles of the 1-D fan (linear interpolation to the pixels; 512 over 30 deg resolves fringes
      of spheres up to ~40 wavelengths).
    - `loss`: a loss name ("poisson" for photon counts, "anscombe", "log") or a `fitting.AbstractLoss` instance.
    - `polarisation`: "unpolarised", "x", "y" or "none", applied to the model with the pixels' solid angle.
    - `pitch`: voxel pitch (default: diffscat's accurate default for the detector).

    Output per pattern: radius, radius_sigma, scale, loss (per used pixel), n_steps, converged.
    """

    names = ("radius", "scale", "loss", "n_steps")
    units = {"radius": "length", "scale": "counts per (length^2 sr^-1 sr)", "loss": "deviance per pixel"}

    def __init__(
        self,
        experiment: ds.Experiment,
        *,
        delta: float = 0.0,
        beta: float = 0.0,
        radius_range: tuple[float, float] = (2.0, 20.0),
        n_candidates: int = 64,
        n_steps: int = 8,
        n_theta: int = 512,
        loss: str | AbstractLoss = "poisson",
        polarisation: str = "unpolarised",
        pitch: float | None = None,
        method: str = "msft",
    ):
        if method not in ds.engines.METHODS:
            raise ValueError(f"method must be one of {ds.engines.METHODS}, got {method!r}")
        self.method = method
        rmin, rmax = (float(v) for v in radius_range)
        if not (0 < rmin < rmax):
            raise ValueError(f"radius_range must be 0 < min < max, got {radius_range}")
        loss = as_loss(loss)
        from diffscat.detectors import pixel_weight

        pix = experiment.pixels()
        theta = np.asarray(pix.theta)
        valid = np.asarray(pix.valid)
        tmax = float(theta[valid].max()) * 1.0005
        self.loss = loss
        self.loss_name = loss.name
        self.n_steps = int(n_steps)
        fan = ds.Experiment(
            experiment.wavelength, ds.Directions(np.linspace(0.0, tmax, n_theta), np.zeros(n_theta))
        )
        if pitch is None:
            pitch = ds.default_pitch(float(experiment.wavelength), min(tmax, math.pi / 2 * 0.99))
        grid = ds.VoxelGrid.around(rmax * 1.05, pitch)
        check_memory(grid.shape, n_theta, what="the batch sphere fitter", knobs=_KNOBS)
        self.grid = grid
        weight = np.asarray(pixel_weight(pix, polarisation))
        weight = np.where(valid, weight, 0.0)
        # Normalise the pixel weights so the profiled scale is O(1) photons per unit model.
        self._weight = jnp.asarray(weight / weight[valid].mean())
        self._theta = jnp.asarray(theta)
        self._valid = jnp.asarray(valid)
        self._fan_theta = jnp.asarray(np.asarray(fan.theta))
        d, b = float(delta), float(beta)
        fan_pix = fan.pixels()
        k0 = fan.k0
        x, _, z = grid.axes(jnp.result_type(float))
        Ex = jnp.exp(-1j * k0 * fan_pix.sx[:, None] * x[None, :])  # (n_theta, nx)
        Ez = jnp.exp(1j * k0 * fan_pix.omc[:, None] * z[None, :])  # (n_theta, nz)
        q_fan = fan_pix.q(k0)

        def profile(r):
            # Exact eq. 9 at phi = 0: with qy = 0 the y-sum is a projection, so the transform is 2-D (x, z).
            shape = ds.Sphere(r, d, b)
            U = ds.engines.slice_sources(shape.render(grid), grid, k0, method)
            V = jnp.sum(U, axis=1)  # (nx, nz)
            psi = jnp.sum(jnp.matmul(Ex, V, precision=jax.lax.Precision.HIGHEST) * Ez, axis=1)
            # undo the renderer's voxel kernel exactly as diffscat.far_field does
            psi = psi / shape.blur_transfer(grid, q_fan)
            return jnp.abs(psi) ** 2

        self._profile = profile
        cands = np.geomspace(rmin, rmax, n_candidates)
        self._cand_r = jnp.asarray(cands)
        self._profiles = None  # computed on first use: a finished job re-run needs no simulation
        self._call = jax.jit(jax.vmap(self._fit_one))

    @property
    def _cand_profiles(self):
        if self._profiles is None:
            self._profiles = jax.lax.map(self._profile, self._cand_r)
        return self._profiles

    def _image(self, prof):
        return jnp.interp(self._theta, self._fan_theta, prof) * self._weight

    def _nll(self, prof, data, mask):
        return self.loss.value(self._image(prof), data, mask)

    @property
    def weight(self) -> jax.Array:
        """Per-pixel solid angle x polarisation, normalised to mean 1 over valid pixels (image-shaped)."""
        return self._weight

    @property
    def valid(self) -> jax.Array:
        """Pixels with a direction (image-shaped bool; False in a QGrid's corners)."""
        return self._valid

    def initial_radius(self, data, mask) -> jax.Array:
        """The candidate radius (length unit) whose exact sphere pattern has the lowest profiled loss, for one
        pattern (traceable; `mask` already combined with `valid`)."""
        losses = jax.vmap(lambda p: self._nll(p, data, mask))(self._cand_profiles)
        return self._cand_r[jnp.argmin(losses)]

    def _fit_one(self, data, mask):
        mask = mask & self._valid
        # 1. scan: the candidate with the lowest profiled loss
        r0 = self.initial_radius(data, mask)

        # 2. refinement in u = log(r / r0): damped Newton with the exact second derivative (a 1-D problem:
        #    optax has no Newton method; each step costs one forward-over-reverse pass). Steps are clipped to
        #    +-2 % so they stay inside the fringe basin the scan found; a non-positive curvature falls back to
        #    a clipped gradient step.
        def radius_of(u):
            r = r0 * jnp.exp(jnp.clip(u, -3.0, 3.0))
            return jnp.where(jnp.isfinite(r), r, r0)

        def f(u):
            return self._nll(self._profile(radius_of(u)), data, mask)

        g1 = jax.grad(f)
        g2 = jax.grad(g1)

        def step(u, _):
            g, h = g1(u), g2(u)
            du = jnp.where(h > 0, -g / jnp.where(h > 0, h, 1.0), -jnp.sign(g) * 0.02)
            du = jnp.clip(jnp.nan_to_num(du), -0.02, 0.02)
            return u + du, jnp.abs(du)

        u, steps = jax.lax.scan(step, jnp.zeros((), self._cand_r.dtype), None, length=self.n_steps)
        radius = radius_of(u)
        value = f(u)
        # 3. uncertainty: curvature of the profile likelihood in r (observed Fisher information)
        h = jax.grad(jax.grad(lambda r: self._nll(self._profile(r), data, mask)))(radius)
        sigma = jnp.where(h > 0, 1.0 / jnp.sqrt(jnp.where(h > 0, h, 1.0)), jnp.nan)
        n_used = jnp.maximum(jnp.sum(mask), 1)
        scale = self.loss.profile_scale(self._image(self._profile(radius)), data, mask)
        converged = (steps[-1] < 1e-5) & (h > 0)
        return {
            "radius": radius,
            "radius_sigma": sigma,
            "scale": scale,
            "loss": value / n_used,
            "n_steps": jnp.asarray(self.n_steps, jnp.int32),
            "converged": converged,
        }

    def prepare(self) -> None:
        """Compute the candidate profiles now (concrete), so they are constants of the compiled fit."""
        _ = self._cand_profiles

    def __call__(self, data, mask):
        self.prepare()
        return self._call(data, mask)

    def model_image(self, radius) -> jax.Array:
        """The (unscaled) model image of a sphere of `radius` as the fitter sees it (for reports)."""
        return self._image(self._profile(jnp.asarray(radius)))


def _rotvec_matrix(w):
    """Rotation matrix of a rotation vector (axis * angle), smooth at 0 (unnormalised-quaternion form)."""
    q = jnp.concatenate([jnp.ones((1,), w.dtype), 0.5 * w])
    return ds.rotation_from_quaternion(q / jnp.linalg.norm(q), normalise=True)


class EllipsoidBatchFitter:
    """Per-pattern triaxial-ellipsoid fit (semi-axes, orientation, fluence scale) for a fixed experiment.

    Initialisation: the equivalent-sphere radius r0 from `SphereBatchFitter`'s scan; then `n_starts`
    orientations (the body axes along the lab axes and along diagonals), axes (0.85, 1, 1.15) r0, optimised
    together (vmapped) with Adam on (log axes, rotation vector) for `n_steps`; the start with the lowest loss wins.
    Uncertainties of the semi-axes from the expected Fisher information of (log axes, rotation, log scale) with
    the configured loss's per-pixel weights (`AbstractLoss.fisher_weight`; 1 / mu for Poisson).
    Output: semi_axes (3,) ascending, semi_axes_sigma (3,), quaternion (4, w >= 0, r_lab = R r_body, body axes
    labelled so that a <= b <= c), scale, loss,
    n_steps, converged. The twin ambiguity (a mirror-related orientation with nearly the same pattern) is not
    resolved here: compare quaternions up to it.
    """

    names = ("semi_axes", "quaternion", "scale", "loss", "n_steps")
    units = {"semi_axes": "length", "scale": "counts per (length^2 sr^-1 sr)", "loss": "deviance per pixel"}

    def __init__(
        self,
        experiment: ds.Experiment,
        *,
        delta: float = 0.0,
        beta: float = 0.0,
        radius_range: tuple[float, float] = (2.0, 20.0),
        max_aspect: float = 1.6,
        n_starts: int = 4,
        n_steps: int = 200,
        learning_rate: float = 0.03,
        loss: str | AbstractLoss = "poisson",
        polarisation: str = "unpolarised",
        pitch: float | None = None,
        n_candidates: int = 64,
        method: str = "msft",
    ):
        self.sphere = SphereBatchFitter(
            experiment, delta=delta, beta=beta, radius_range=radius_range, n_candidates=n_candidates,
            n_steps=3, loss=loss, polarisation=polarisation, pitch=pitch, method=method,
        )  # fmt: skip
        self.method = method
        self.experiment = experiment
        self.loss = self.sphere.loss
        if pitch is None:
            pitch = self.sphere.grid.pitch[0]
        self.grid = ds.VoxelGrid.around(float(radius_range[1]) * max_aspect ** (2 / 3) * 1.05, pitch)
        check_memory(
            self.grid.shape, math.prod(experiment.shape), what="the batch ellipsoid fitter", knobs=_KNOBS
        )
        self._weight = self.sphere.weight  # solid angle x polarisation, normalised (same pixels)
        self.delta, self.beta = float(delta), float(beta)
        self.n_steps = int(n_steps)
        starts = [np.eye(3), np.asarray(ds.rotation_y(np.pi / 2)), np.asarray(ds.rotation_x(np.pi / 2))]
        starts.append(
            np.asarray(ds.rotation_from_euler(np.array([np.pi / 4, np.arccos(1 / np.sqrt(3)), 0.0])))
        )
        while len(starts) < n_starts:
            starts.append(np.asarray(ds.rotation_from_euler(np.array([0.7 * len(starts), 1.1, 0.3]))))
        self._R0 = jnp.asarray(np.stack(starts[:n_starts]))
        self._opt = optax.adam(learning_rate)
        self._call = jax.jit(jax.vmap(self._fit_one))

    def _model(self, params, R0):
        log_ax, w = params
        R = mm(R0, _rotvec_matrix(w))
        shape = ds.Ellipsoid(jnp.exp(log_ax), self.delta, self.beta, rotation=R)
        return ds.simulate(shape, self.experiment, grid=self.grid, method=self.method) * self._weight, shape

    def _fit_one(self, data, mask):
        mask = mask & self.sphere.valid
        r0 = self.sphere.initial_radius(data, mask)
        norm = jnp.maximum(jnp.sum(mask), 1).astype(data.dtype)
        ax0 = jnp.log(r0 * jnp.array([0.85, 1.0, 1.15], r0.dtype))

        def f(params, R0):
            return self.loss.value(self._model(params, R0)[0], data, mask) / norm

        def run(R0):
            p = (ax0, jnp.zeros(3, r0.dtype))
            st = self._opt.init(p)

            def step(c, _):
                p, st = c
                v, g = jax.value_and_grad(f)(p, R0)
                g = jax.tree.map(jnp.nan_to_num, g)
                up, st = self._opt.update(g, st, p)
                p = optax.apply_updates(p, up)
                return (p, st), v

            (p, _), hist = jax.lax.scan(step, (p, st), None, length=self.n_steps)
            return p, f(p, R0), hist

        ps, finals, hists = jax.vmap(run)(self._R0)
        ib = jnp.argmin(jnp.where(jnp.isfinite(finals), finals, jnp.inf))
        p = jax.tree.map(lambda x: x[ib], ps)
        R0 = self._R0[ib]
        img, shape = self._model(p, R0)
        scale = self.loss.profile_scale(img, data, mask)
        # expected Fisher information of z = (log axes, rotation vector, log scale) for the configured loss
        z0 = jnp.concatenate([p[0], p[1], jnp.log(scale)[None]])
        mu_of = lambda z: jnp.exp(z[6]) * self._model((z[:3], z[3:6]), R0)[0]
        mu = mu_of(z0)
        J = jax.jacfwd(mu_of)(z0).reshape(-1, 7)
        wgt = self.loss.fisher_weight(mu, data, mask).reshape(-1)
        F = mm((J * wgt[:, None]).T, J)
        cov = jnp.linalg.pinv(F)
        axes = jnp.exp(p[0])
        sig = axes * jnp.sqrt(jnp.maximum(jnp.diag(cov)[:3], 0.0))
        # canonical labels: axes ascending (a <= b <= c), rotation columns permuted alike, kept proper (det +1)
        order = jnp.argsort(axes)
        axes, sig = axes[order], sig[order]
        Rc = shape.rotation[:, order]
        Rc = Rc.at[:, 2].multiply(jnp.sign(jnp.linalg.det(Rc)))
        hist = hists[ib]
        converged = jnp.abs(hist[-1] - hist[-10]) < 1e-4 * (1 + jnp.abs(hist[-1]))
        return {
            "semi_axes": axes,
            "semi_axes_sigma": sig,
            "quaternion": ds.quaternion_from_rotation(Rc),
            "scale": scale,
            "loss": finals[ib],
            "n_steps": jnp.asarray(self.n_steps, jnp.int32),
            "converged": converged,
        }

    def __call__(self, data, mask):
        self.sphere.prepare()  # candidate profiles computed (concrete) before tracing
        return self._call(data, mask)

    def model_image(self, semi_axes, quaternion) -> jax.Array:
        """The (unscaled) model image of an ellipsoid (semi-axes (3,), quaternion (w, x, y, z)) as the fitter sees
        it (for reports; multiply by the fitted `scale`)."""
        R = ds.rotation_from_quaternion(jnp.asarray(quaternion), normalise=True)
        shape = ds.Ellipsoid(jnp.asarray(semi_axes), self.delta, self.beta, rotation=R)
        return ds.simulate(shape, self.experiment, grid=self.grid, method=self.method) * self._weight
