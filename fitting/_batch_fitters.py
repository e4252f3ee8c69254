"""Vmappable per-pattern fitters for batch inversion (`fitting.batch_fit`).

A batch fitter is a callable `(data[B, ny, nx], mask[B, ny, nx]) -> {name: (B,) array}` built once per dataset
geometry. Everything per pattern (automatic initialisation, the optimisation, the uncertainty) is pure JAX with a
fixed number of steps, so a whole chunk is one `jit(vmap(...))` call whose batch axis can be sharded over devices.

`SphereBatchFitter`: a sphere's MSFT pattern is symmetric about the beam axis (so is the propagation through it),
so the model is the exact eq. 9 evaluated on a fine 1-D fan of angles and interpolated to the pixels' theta; the
radius is initialised by a scan over precomputed candidate profiles (shared by all patterns), then refined by
damped Newton steps on log(radius) with the Poisson likelihood and the fluence profiled out; sigma from the curvature.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

import diffscat as ds

from ._losses import LOSSES

__all__ = ["SphereBatchFitter"]


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
    - `loss`: "poisson" (photon counts), "anscombe" or "log" (see `fitting.losses`).
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
        loss: str = "poisson",
        polarisation: str = "unpolarised",
        pitch: float | None = None,
    ):
        rmin, rmax = (float(v) for v in radius_range)
        if not (0 < rmin < rmax):
            raise ValueError(f"radius_range must be 0 < min < max, got {radius_range}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {tuple(LOSSES)}, got {loss!r}")
        from diffscat.detectors import polarisation_factor

        pix = experiment.pixels()
        theta = np.asarray(pix.theta)
        valid = np.asarray(pix.valid)
        tmax = float(theta[valid].max()) * 1.0005
        self.loss_name = loss
        self._loss = LOSSES[loss]
        self.n_steps = int(n_steps)
        fan = ds.Experiment(
            experiment.wavelength, ds.Directions(np.linspace(0.0, tmax, n_theta), np.zeros(n_theta))
        )
        if pitch is None:
            pitch = ds.default_pitch(float(experiment.wavelength), min(tmax, math.pi / 2 * 0.99))
        grid = ds.VoxelGrid.around(rmax * 1.05, pitch)
        self.grid = grid
        weight = np.asarray(pix.solid_angle) * np.asarray(polarisation_factor(pix, polarisation))
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

        def profile(r):
            # Exact eq. 9 at phi = 0: with qy = 0 the y-sum is a projection, so the transform is 2-D (x, z).
            shape = ds.Sphere(r, d, b)
            U = ds.engines.slice_sources(shape.render(grid), grid, k0, "msft")
            V = jnp.sum(U, axis=1)  # (nx, nz)
            psi = jnp.sum(jnp.matmul(Ex, V, precision=jax.lax.Precision.HIGHEST) * Ez, axis=1)
            # undo the soft-indicator blur exactly as diffscat.far_field does (|q|^2 = 2 k0^2 (1 - cos theta))
            psi = psi * jnp.exp(shape.smoothing_sigma(grid) ** 2 * k0**2 * fan_pix.omc)
            return jnp.abs(psi) ** 2

        self._profile = profile
        cands = np.geomspace(rmin, rmax, n_candidates)
        self._cand_r = jnp.asarray(cands)
        self._cand_profiles = jax.lax.map(profile, self._cand_r)
        self._call = jax.jit(jax.vmap(self._fit_one))

    def _image(self, prof):
        return jnp.interp(self._theta, self._fan_theta, prof) * self._weight

    def _nll(self, prof, data, mask):
        return self._loss(self._image(prof), data, mask)

    def _fit_one(self, data, mask):
        mask = mask & self._valid
        # 1. scan: the candidate with the lowest profiled loss
        losses = jax.vmap(lambda p: self._nll(p, data, mask))(self._cand_profiles)
        r0 = self._cand_r[jnp.argmin(losses)]

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
        # 3. uncertainty: curvature of the profile likelihood in r (observed Fisher information for Poisson)
        h = jax.grad(jax.grad(lambda r: self._nll(self._profile(r), data, mask)))(radius)
        sigma = jnp.where(h > 0, 1.0 / jnp.sqrt(jnp.where(h > 0, h, 1.0)), jnp.nan)
        n_used = jnp.maximum(jnp.sum(mask), 1)
        from ._losses import profile_scale

        scale = profile_scale(self.loss_name, self._image(self._profile(radius)), data, mask)
        converged = (steps[-1] < 1e-5) & (h > 0)
        return {
            "radius": radius,
            "radius_sigma": sigma,
            "scale": scale,
            "loss": value / n_used,
            "n_steps": jnp.asarray(self.n_steps, jnp.int32),
            "converged": converged,
        }

    def __call__(self, data, mask):
        return self._call(data, mask)

    def model_image(self, radius) -> jax.Array:
        """The (unscaled) model image of a sphere of `radius` as the fitter sees it (for reports)."""
        return self._image(self._profile(jnp.asarray(radius)))
