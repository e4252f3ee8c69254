"""`AutoBatchFitter`: every model class of `fitting.fit_auto` in `batch_fit`, one pattern at a time.

`batch_fit` calls a fitter on a chunk of patterns and stores one row per pattern. The vmapped fitters of
`_batch_fitters` (Sphere, Ellipsoid) fit a whole chunk in one compiled call; this one loops `fitting.fit_auto`
over the chunk's patterns (`_fit_chunk`, the one place to swap in a pattern-vmapped engine later). fit_auto's
compiled steps are reused across patterns of one geometry ("compile once"), so after the first pattern the loop
costs the run time only. Because it fits pattern by pattern, it declares `per_pattern = True`: `batch_fit` then
passes only the good patterns of a chunk (no padding) and an `on_pattern` callback that advances the progress bar
per pattern.

Per pattern it also decides whether the fit is consistent with the noise model (`noise_consistency`): the
observed loss is compared with the loss of `gof_draws` Poisson realisations of the fitted expected counts.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np

import diffscat as ds

from ._auto import (
    CANDIDATES,
    DELTA_SIGN_TOL,
    check_delta_sign_tol,
    check_fit_optics,
    check_network_min_prob,
    check_network_prune,
    data_loss,
    noise_consistency,
)
from ._evalset import POLYHEDRA
from ._init import HARMONIC_ROUTES
from ._losses import AbstractLoss, as_loss

__all__ = ["AutoBatchFitter", "noise_consistency", "GOF_THRESHOLD"]

GOF_THRESHOLD = 5.0
"""Default misfit threshold on z = (loss - mean) / sd of the loss over Poisson realisations of the fit (see
`noise_consistency` and docs/batch.md)."""

# AutoBatchFitter's default memory budget on the CPU backend [MiB] (issue 14: a 64^2 chunk of 16, any model,
# under 2 GB peak): the jit caches are cleared before a pattern when the resident set is over it. Measured on the
# harmonic dataset's first 16 patterns (docs/batch.md, "Memory"): peak RSS 2.46 GB without, 2.10 / 1.90 / 1.70 GB
# with 1400 / 1200 / 1000 MiB, at +0 / +14 / +23 % time (loaded 2-core CPU). Not on an accelerator: the CUDA
# runtime alone holds ~1 GB of host memory there and XLA:GPU compiles slowly.
DEFAULT_RSS_BUDGET_MIB = 1200.0


def _canonical_ellipsoid(axes, sig, R):
    """Semi-axes ascending (a <= b <= c), sigmas and rotation columns permuted alike, kept proper (det +1): the
    labelling of `EllipsoidBatchFitter`."""
    order = np.argsort(axes)
    Rc = np.asarray(R, float)[:, order]
    Rc[:, 2] *= np.sign(np.linalg.det(Rc))
    return np.asarray(axes)[order], np.asarray(sig)[order], Rc


def _failed_as_none(r, seconds: float):
    """A pattern's fit (its `batch_time_s` set to `seconds`), or None for a `ValueError` / `ArithmeticError`
    it raised (reported on stderr): a bad pattern must not stop the batch."""
    if isinstance(r, ValueError | ArithmeticError):
        print(f"batch-fit: a pattern failed: {r}", file=sys.stderr)
        return None
    r.batch_time_s = seconds
    return r


def escape_code(result) -> int:
    """batch-fit's `escape` column for a harmonic `FitResult`: 0 when no escape ran, else 1 + the index in
    `HARMONIC_ROUTES` (`ESCAPE_ROUTES`, then "network", "ellipsoid_search") of the route with the lowest loss in
    `result.escapes` (the one kept)."""
    log = getattr(result, "escapes", None)
    if not log:
        return 0
    best = min(log, key=lambda e: e[1])
    return 1 + HARMONIC_ROUTES.index(best[0])


class AutoBatchFitter:
    """Per-pattern `fitting.fit_auto` for `batch_fit`: one class, or a class chosen by BIC among `candidates`.

    **Arguments:**
    - `experiment`: the dataset's geometry.
    - `candidates`: class names among `fitting.CANDIDATES` ("Sphere", "Ellipsoid", "SphericalHarmonics", the
      six polyhedra, "Superellipsoid"); one name = that class only, several = selection by `criterion`.
    - `delta`, `beta`: optical constants (fixed, or the starting values of those named in `fit_optics`).
    - `fit_optics`: names among ("delta", "beta") fitted per pattern (`fit_auto(fit_optics=...)`): columns
      `delta` / `beta` (+ sigma), and the reports draw each pattern with its own. With delta fitted, column
      `delta_sign` (`fitting.keep_delta_sign`, tolerance `delta_sign_tol` NLL units, None: off): 0 = the fit
      kept the start's sign (unchecked), 1 = it crossed to the other sign but the start's fits as well
      (within the tolerance): the start's sign kept, the data cannot tell; 2 = the other sign fits better;
      -1 = no fit.
    - `lmax`: largest harmonic degree of "SphericalHarmonics" (the ladder sphere -> ellipsoid -> l = 2..lmax).
    - `loss`, `polarisation`, `method`, `pitch`, `max_steps`, `alternatives_tol`: to every `fitting.fit` call.
    - `n_starts` (ellipsoid orientations), `n_orientations`, `n_refine` (oriented classes), `class_margin`,
      `min_classes` (which polyhedra are refined after their orientation searches), `refine_margin` (which
      of those are refined at full resolution after the crop refinement), `criterion`, `seed`:
      to `fit_auto` (the same seed for every pattern: results do not depend on the chunking, so resume is exact).
    - `radius_range`: optional (min, max) of the volume-equivalent radius (length unit); a fit outside it is
      flagged `out_of_range` (fit_auto's size estimate has no range: the range is a check, not a search bound).
    - `gof_draws`, `gof_threshold`: the noise-consistency check (`noise_consistency`): `misfit` when
      z > `gof_threshold`.
    - `init`: None, or a network (model path, "default", a `fitting.NetworkPredictor`): `fit_auto(init=...)`,
      the network's prediction starts each pattern's fits (loaded once, checked here); `network_min_prob`:
      polyhedra the network gives a lower probability are not fitted (`fit_auto(network_min_prob=...)`;
      `network_prune="all"`: any class it knows, `fit_auto(network_prune=...)`; `network_nested`: the nested
      sphere / ellipsoid / harmonic classes it ruled out fitted after all around the best, `fit_auto(network_nested=...)`);
      `sh_start`: where the harmonic stage starts (`fit_auto(sh_start=...)`: "auto", "network", "ellipsoid").
      `sh_escapes`: when the harmonic stage's escapes run (`fit_auto(sh_escapes=...)`: "misfit", "always").
      `ellipsoid_start`: the network-started ellipsoid's path (`fit_auto(ellipsoid_start=...)`: "robust",
      "network").
    - `lockstep`: run the chunk's patterns together (`fitting.lockstep_map`: each pattern's `fit_auto` in
      its own thread, their `fitting.fit` calls merged into vmapped batches over the patterns, sharded
      over the local devices); "auto" (default): on when JAX's default backend is not the CPU (a batch
      costs about one pattern on an accelerator, its size on a CPU). `max_batch`: at most this many
      patterns per merged call (None: the chunk). `merge_grids` (default True): the merged calls run on the
      smallest voxel grid that holds every member's, so a pattern's result depends slightly on its chunk mates
      (the discretisation, ~1 NLL unit; the chunking is fixed by the manifest, so `--resume` stays exact);
      False: only patterns with equal grids merge, each result is its pattern-by-pattern fit.
    - `rss_budget_mib`: before each pattern (each chunk in lockstep), and on the per-pattern path also before
      each stage of a pattern's oriented classes (the polyhedra's orientation search, crop and full
      refinement: `fitting._jitmem.stage_budget`), jax's
      compilation caches are cleared when the process's resident set exceeds this many MiB
      (`fitting._jitmem.release_jit_memory`; the compiled
      programs hold most of a long run's memory); the programs then compile again (from the persistent
      compilation cache where it is on). "auto" (default): `DEFAULT_RSS_BUDGET_MIB` (1200) on the CPU backend,
      none on an accelerator; None or 0: no budget (the caches are cleared only near vm.max_map_count).

    Calling it on (data[B, ny, nx], mask[B, ny, nx]) returns a dict of per-pattern arrays (row b = pattern b):
    `class` (int code into `candidates`), `radius` (volume-equivalent, length) and `radius_sigma`, `scale`
    (photons per length^2), `loss` (data loss per used pixel), `gof_z`, `quaternion` (4: w, x, y, z, w >= 0,
    r_lab = R r_body; NaN for a sphere), `scatman_angles` (3: latitude, longitude, rotation in degrees, as
    `diffscat.scatman_from_rotation`), `n_alternatives` (int: other starts within `alternatives_tol`, e.g. twins),
    `n_steps`, `time_s`; with several candidates `class_losses` and `class_criterion` (B, n_candidates);
    `edge`(+sigma) when a polyhedron is a candidate, `semi_axes`(+sigma) for Ellipsoid / Superellipsoid
    (ellipsoid axes ascending, the rotation relabelled alike), `exponents` for Superellipsoid, `coefficients`
    (+sigma) ((lmax + 1)^2, body frame) and `escape` (int: 0 no escape ran, else 1 + the index in
    `HARMONIC_ROUTES` of the escape route kept; `fitting.harmonics_ladder`) for SphericalHarmonics; NaN where
    the pattern's class has no such parameter. Plus the flags `converged`, `misfit`, `out_of_range` that `batch_fit` turns into the status.
    """

    per_pattern = True

    def __init__(
        self,
        experiment: ds.Experiment,
        candidates: Sequence[str] = ("Sphere",),
        *,
        delta: float = 0.0,
        beta: float = 0.0,
        lmax: int = 4,
        loss: str | AbstractLoss = "poisson",
        polarisation: str = "unpolarised",
        method: str = "msft",
        pitch: float | None = None,
        max_steps: int = 200,
        n_starts: int = 8,
        n_orientations: int | None = None,
        n_refine: int = 4,
        class_margin: float | None = 1.5,
        min_classes: int = 2,
        refine_margin: float | None = 1.5,
        criterion: str = "bic",
        seed: int = 0,
        alternatives_tol: float = 5.0,
        radius_range: tuple[float, float] | None = None,
        gof_draws: int = 8,
        gof_threshold: float = GOF_THRESHOLD,
        init: object = None,
        network_min_prob: float | None = None,
        network_prune: str = "polyhedra",
        network_nested: bool = True,
        sh_start: str = "auto",
        sh_escapes: str = "misfit",
        ellipsoid_start: str = "robust",
        fit_optics: Sequence[str] = (),
        delta_sign_tol: float | None = DELTA_SIGN_TOL,
        lockstep: bool | str = "auto",
        max_batch: int | None = None,
        merge_grids: bool = True,
        rss_budget_mib: int | float | str | None = "auto",
    ):
        if isinstance(candidates, str):
            candidates = (candidates,)
        cands = list(dict.fromkeys(candidates))
        if not cands:
            raise ValueError("candidates must name at least one shape class")
        bad = [c for c in cands if c not in CANDIDATES]
        if bad:
            raise ValueError(f"candidates must be among {CANDIDATES}, got {bad}")
        if int(lmax) < 0:
            raise ValueError(f"lmax must be >= 0, got {lmax}")
        if int(gof_draws) < 2:
            raise ValueError(f"gof_draws must be >= 2, got {gof_draws}")
        if radius_range is not None:
            rmin, rmax = (float(v) for v in radius_range)
            if not 0 < rmin < rmax:
                raise ValueError(f"radius_range must be 0 < min < max, got {radius_range}")
            radius_range = (rmin, rmax)
        if not (isinstance(lockstep, bool) or lockstep == "auto"):
            raise ValueError(f'lockstep must be True, False or "auto", got {lockstep!r}')
        if max_batch is not None and (isinstance(max_batch, bool) or int(max_batch) < 1):
            raise ValueError(f"max_batch must be None or an integer >= 1, got {max_batch!r}")
        if rss_budget_mib == "auto":
            rss_budget_mib = DEFAULT_RSS_BUDGET_MIB if jax.default_backend() == "cpu" else None
        if isinstance(rss_budget_mib, str) or (rss_budget_mib is not None and not float(rss_budget_mib) >= 0):
            raise ValueError(f'rss_budget_mib must be "auto", None or >= 0 (0: none), got {rss_budget_mib!r}')
        self.rss_budget_mib = float(rss_budget_mib) if rss_budget_mib else None
        self.lockstep = lockstep
        self.max_batch = None if max_batch is None else int(max_batch)
        self.merge_grids = bool(merge_grids)
        self.experiment = experiment
        self.candidates = tuple(cands)
        self.delta, self.beta = float(delta), float(beta)
        self.lmax = int(lmax)
        self.loss = as_loss(loss)
        self.polarisation = polarisation
        self.method = method
        self.pitch = pitch
        self.radius_range = radius_range
        self.gof_draws = int(gof_draws)
        self.gof_threshold = float(gof_threshold)
        self.seed = int(seed)
        self.fit_optics = check_fit_optics(fit_optics)
        delta_sign_tol = check_delta_sign_tol(delta_sign_tol)
        self._has_sign = "delta" in self.fit_optics and delta_sign_tol is not None
        self.auto_kwargs = dict(
            fit_optics=self.fit_optics,
            delta_sign_tol=delta_sign_tol,
            lmax=self.lmax,
            criterion=criterion,
            n_starts=int(n_starts),
            n_orientations=None if n_orientations is None else int(n_orientations),
            n_refine=int(n_refine),
            class_margin=None if class_margin is None else float(class_margin),
            min_classes=int(min_classes),
            refine_margin=None if refine_margin is None else float(refine_margin),
            seed=self.seed,
            loss=self.loss,
            polarisation=polarisation,
            method=method,
            max_steps=int(max_steps),
            alternatives_tol=float(alternatives_tol),
            escape_z=self.gof_threshold,  # the harmonic ladder's escapes run on exactly the would-be misfits
        )
        if pitch is not None:
            self.auto_kwargs["pitch"] = float(pitch)
        if init is not None:
            from ._netinit import resolve_network

            self.auto_kwargs["init"] = resolve_network(init)  # a bad path fails here, before any pattern
        if sh_start != "auto":
            from ._auto import _sh_from_network

            _sh_from_network(sh_start, self.auto_kwargs.get("init"))  # a bad value fails before any pattern
            self.auto_kwargs["sh_start"] = sh_start
        if sh_escapes != "misfit":
            from ._init import _check_escapes

            self.auto_kwargs["sh_escapes"] = _check_escapes(sh_escapes, "sh_escapes")
        if ellipsoid_start != "robust":
            from ._auto import _ellipsoid_start_kwargs

            _ellipsoid_start_kwargs(ellipsoid_start)  # a bad value fails before any pattern
            self.auto_kwargs["ellipsoid_start"] = ellipsoid_start
        if network_min_prob is not None:
            check_network_min_prob(network_min_prob, init)  # before any pattern, as the network's path
            self.auto_kwargs["network_min_prob"] = float(network_min_prob)
        check_network_prune(network_prune)
        if network_prune != "polyhedra":
            if network_min_prob is None:
                raise ValueError(
                    "network_prune needs network_min_prob (the probability below which a class is dropped)"
                )
            self.auto_kwargs["network_prune"] = network_prune
        if not isinstance(network_nested, bool):
            raise TypeError(f"network_nested must be a bool, got {network_nested!r}")
        if not network_nested:
            self.auto_kwargs["network_nested"] = False
        c = set(cands)
        self._has_edge = bool(c & set(POLYHEDRA))
        self._has_axes = bool(c & {"Ellipsoid", "Superellipsoid"})
        self._has_exp = "Superellipsoid" in c
        self._has_sh = "SphericalHarmonics" in c
        self._select = len(cands) > 1
        names = ["class", "radius", "scale", "loss", "gof_z", "quaternion", "scatman_angles"]
        names += ["n_alternatives", "n_steps", "time_s"]
        if self._select:
            names += ["class_losses", "class_criterion"]
        if self._has_edge:
            names.append("edge")
        if self._has_axes:
            names.append("semi_axes")
        if self._has_exp:
            names.append("exponents")
        if self._has_sh:
            names += ["coefficients", "escape"]
        names += list(self.fit_optics)
        if self._has_sign:
            names.append("delta_sign")
        self.names = tuple(names)
        self.units = {
            "radius": "length",
            "edge": "length",
            "semi_axes": "length",
            "coefficients": "length",
            "exponents": "1",
            "scale": "photons per length^2",
            "loss": "negative log-likelihood per used pixel",
            "class_losses": "negative log-likelihood",
            "class_criterion": "negative log-likelihood + penalty",
            "gof_z": "1",
            "scatman_angles": "deg",
            "quaternion": "1",
            "time_s": "s",
            "delta": "1",
            "beta": "1",
        }
        self.int_columns = (
            ("class", "n_alternatives", "n_steps")
            + (("escape",) if self._has_sh else ())
            + (("delta_sign",) if self._has_sign else ())
        )
        cn = list(self.candidates)
        self.column_attrs = {
            "class": {"names": cn},
            "quaternion": {"convention": "(w, x, y, z), w >= 0, r_lab = R r_body"},
            "scatman_angles": {"order": "latitude, longitude, rotation (diffscat.scatman_from_rotation)"},
            "radius": {"meaning": "volume-equivalent radius (3 V / 4 pi)^(1/3)"},
            "gof_z": {"threshold": self.gof_threshold, "n_draws": self.gof_draws},
        }
        if self._has_sign:
            self.column_attrs["delta_sign"] = {
                "codes": "0 start's sign (unchecked), 1 start's sign kept (the data cannot tell), "
                "2 the other sign (the data chose it), -1 no fit",
                "tolerance": delta_sign_tol,
            }
        if self._select:
            self.column_attrs["class_losses"] = {"names": cn}
            self.column_attrs["class_criterion"] = {"names": cn, "criterion": criterion}
        if self._has_sh:
            self.column_attrs["escape"] = {
                "names": ["none", *HARMONIC_ROUTES],
                "meaning": "the harmonic stage's route whose result was kept (fitting.harmonics_ladder, "
                "fitting.fit_auto sh_start): none = the first route's result was consistent with the noise, "
                "no escape ran; else the route kept after the escapes (the first, network or compact_all by "
                "default, or another); -1 = no harmonic fit",
            }
            self.column_attrs["coefficients"] = {
                "lmax": self.lmax,
                "index": "c_lm at l^2 + l + m (body frame)",
            }

    # --- the per-pattern engine (swap point for a pattern-vmapped one) -----------------------------------
    def _fit_chunk(self, data, mask, on_pattern: Callable[[], None] | None = None) -> list:
        """`fitting.fit_auto` on each pattern: data (B, ny, nx) counts, mask (B, ny, nx) True = use. Returns a
        list of B `FitResult`s (None where the fit raised a ValueError: the pattern is then `failed`), calling
        `on_pattern()` after each pattern. Pattern after pattern, or all together (`uses_lockstep`)."""
        from ._jitmem import release_jit_memory, stage_budget

        data, mask = np.asarray(data), np.asarray(mask, bool)
        if self.uses_lockstep():
            return self._fit_chunk_lockstep(data, mask, on_pattern)
        out = []
        for d, m in zip(data, mask, strict=True):
            # a long run would otherwise die at vm.max_map_count, and grow with every program (fitting/_jitmem.py)
            release_jit_memory(rss_budget_mib=self.rss_budget_mib)
            t0 = time.perf_counter()
            try:
                with stage_budget(self.rss_budget_mib):  # also checked between a pattern's class stages
                    r = self._fit_one(d, m)
            except (ValueError, ArithmeticError) as e:
                r = e
            out.append(_failed_as_none(r, time.perf_counter() - t0))
            if on_pattern is not None:
                on_pattern()
        return out

    def _fit_one(self, d, m):
        from ._auto import fit_auto

        return fit_auto(d, self.experiment, self.candidates, m, self.delta, self.beta, **self.auto_kwargs)

    def uses_lockstep(self) -> bool:
        """Whether chunks run in lockstep (`lockstep`, "auto": not on the CPU backend)."""
        if self.lockstep == "auto":
            return jax.default_backend() != "cpu"
        return bool(self.lockstep)

    def _fit_chunk_lockstep(self, data, mask, on_pattern) -> list:
        """`_fit_chunk` with the patterns' fits merged (`fitting.lockstep_map`); `batch_time_s` is the chunk's
        wall time divided by its patterns."""
        from ._jitmem import release_jit_memory
        from ._lockstep import lockstep_map

        release_jit_memory(rss_budget_mib=self.rss_budget_mib)
        lock = threading.Lock()

        def done(i, r):
            if on_pattern is not None:
                with lock:
                    on_pattern()

        t0 = time.perf_counter()
        res = lockstep_map(
            lambda i: self._fit_one(data[i], mask[i]),
            range(len(data)),
            merge_grids=self.merge_grids,
            max_batch=self.max_batch,
            on_done=done,
        )
        dt = (time.perf_counter() - t0) / max(len(data), 1)
        out = []
        for r in res:
            if isinstance(r, BaseException) and not isinstance(r, ValueError | ArithmeticError):
                raise r
            out.append(_failed_as_none(r, dt))
        return out

    # --- one FitResult -> one row ------------------------------------------------------------------------
    def _empty_row(self) -> dict:
        nc = len(self.candidates)
        nan = np.nan
        row = {
            "class": -1,
            "radius": nan,
            "radius_sigma": nan,
            "scale": nan,
            "loss": nan,
            "gof_z": nan,
            "quaternion": np.full(4, nan),
            "scatman_angles": np.full(3, nan),
            "n_alternatives": -1,
            "n_steps": -1,
            "time_s": nan,
            "converged": False,
            "misfit": False,
            "out_of_range": False,
        }
        if self._select:
            row["class_losses"] = np.full(nc, nan)
            row["class_criterion"] = np.full(nc, nan)
        if self._has_edge:
            row["edge"] = row["edge_sigma"] = nan
        if self._has_axes:
            row["semi_axes"] = np.full(3, nan)
            row["semi_axes_sigma"] = np.full(3, nan)
        if self._has_exp:
            row["exponents"] = np.full(2, nan)
        if self._has_sh:
            n = (self.lmax + 1) ** 2
            row["coefficients"] = np.full(n, nan)
            row["coefficients_sigma"] = np.full(n, nan)
            row["escape"] = -1
        for o in self.fit_optics:
            row[o] = row[o + "_sigma"] = nan
        if self._has_sign:
            row["delta_sign"] = -1
        return row

    def row(self, r) -> dict:
        """The per-pattern values of one `FitResult` of `fit_auto` (see the class docstring)."""
        row = self._empty_row()
        if r is None:
            return row
        model = r.model
        name = type(model).__name__
        sig = {k: np.asarray(v, float) for k, v in r.sigmas.items()}
        row["class"] = self.candidates.index(name)
        vol = float(np.asarray(model.volume()))
        radius = (3.0 * vol / (4.0 * math.pi)) ** (1 / 3)
        row["radius"] = radius
        n_used = max(int(r.n_used), 1)
        row["loss"] = data_loss(r) / n_used
        row["scale"] = float(r.scale)
        row["n_alternatives"] = len(r.alternatives)
        row["n_steps"] = int(r.n_steps)
        row["time_s"] = float(getattr(r, "batch_time_s", r.time_s))
        row["converged"] = bool(r.converged)
        R = None
        if name == "Sphere":
            row["radius_sigma"] = float(sig.get("radius", np.nan))
        elif name in POLYHEDRA:
            e = float(np.asarray(model.edge))
            row["edge"] = e
            row["edge_sigma"] = float(sig.get("edge", np.nan))
            row["radius_sigma"] = radius * row["edge_sigma"] / e  # r is proportional to the edge
            R = np.asarray(model.rotation, float)
        elif name in ("Ellipsoid", "Superellipsoid"):
            ax = np.asarray(model.semi_axes, float)
            s = sig.get("semi_axes", np.full(3, np.nan))
            R = np.asarray(model.rotation, float)
            if name == "Ellipsoid":
                ax, s, R = _canonical_ellipsoid(ax, s, R)
            else:
                row["exponents"] = np.asarray(model.exponents, float)
            row["semi_axes"], row["semi_axes_sigma"] = ax, s
            # r is proportional to (abc)^(1/3) at fixed exponents; axes' errors taken as independent
            row["radius_sigma"] = radius / 3.0 * float(np.sqrt(np.sum((s / ax) ** 2)))
        elif name == "SphericalHarmonics":
            c = np.asarray(model.coefficients, float)
            s = sig.get("coefficients", np.full(c.shape, np.nan))
            row["coefficients"], row["coefficients_sigma"] = c, s
            # first order about a sphere: r = c_00 / sqrt(4 pi)
            row["radius_sigma"] = float(s[0]) / math.sqrt(4.0 * math.pi)
            R = np.asarray(model.rotation, float)
            row["escape"] = escape_code(r)
        if R is not None:
            q = np.asarray(ds.quaternion_from_rotation(R), float)
            row["quaternion"] = q if q[0] >= 0 else -q
            row["scatman_angles"] = np.asarray(ds.scatman_from_rotation(R), float)
        for o in self.fit_optics:
            row[o] = float(np.asarray(r.values[o]))
            row[o + "_sigma"] = float(sig.get(o, np.nan))
        if self._has_sign:
            row["delta_sign"] = {None: 0, "kept": 1, "data": 2}[getattr(r, "delta_sign", None)]
        if self._select and r.ranking is not None:
            for cname, nll, _k, crit in r.ranking:
                j = self.candidates.index(cname)
                row["class_losses"][j] = nll
                row["class_criterion"][j] = crit
        z, _, _ = noise_consistency(r, self.gof_draws, seed=self.seed + 1)
        row["gof_z"] = z
        row["misfit"] = bool(np.isfinite(z) and z > self.gof_threshold)
        if self.radius_range is not None:
            row["out_of_range"] = not (self.radius_range[0] <= radius <= self.radius_range[1])
        return row

    def __call__(self, data, mask, on_pattern: Callable[[], None] | None = None) -> dict[str, np.ndarray]:
        """Fit patterns data (B, ny, nx) with masks (B, ny, nx); returns {column: (B, ...) array}."""
        rows = [self.row(r) for r in self._fit_chunk(data, mask, on_pattern)]
        if not rows:
            return {k: np.asarray([v])[:0] for k, v in self._empty_row().items()}
        return {k: np.stack([np.asarray(rw[k]) for rw in rows]) for k in rows[0]}

    # --- reports -----------------------------------------------------------------------------------------
    def shape_of(self, res: dict, i: int):
        """The fitted shape of row `i` of a results dict (`fitting.read_results`), or None when not fitted."""
        code = int(res["class"][i])
        if code < 0:
            return None
        name = self.candidates[code]
        kw = dict(delta=self.delta, beta=self.beta)
        for o in self.fit_optics:  # this pattern's fitted optical constants
            if o in res and np.isfinite(res[o][i]):
                kw[o] = float(res[o][i])
        q = np.asarray(res["quaternion"][i], float)
        R = ds.rotation_from_quaternion(q, normalise=True) if np.all(np.isfinite(q)) else None
        if name == "Sphere":
            return ds.Sphere(float(res["radius"][i]), **kw)
        if name in POLYHEDRA:
            return getattr(ds, name)(float(res["edge"][i]), rotation=R, **kw)
        if name == "Ellipsoid":
            return ds.Ellipsoid(np.asarray(res["semi_axes"][i], float), rotation=R, **kw)
        if name == "Superellipsoid":
            return ds.Superellipsoid(
                np.asarray(res["semi_axes"][i], float),
                np.asarray(res["exponents"][i], float),
                rotation=R,
                **kw,
            )
        return ds.SphericalHarmonics(np.asarray(res["coefficients"][i], float), rotation=R, **kw)

    def model_image_row(self, res: dict, i: int) -> np.ndarray:
        """Expected counts (image-shaped) of row `i` of a results dict: the fitted shape, simulated as the fit
        did (`fitting.expected_signal`, solid angle and polarisation), times the fitted scale."""
        from ._fit import expected_signal

        shape = self.shape_of(res, i)
        if shape is None:
            return np.full(self.experiment.shape, np.nan)
        lam, tmax = self.experiment.sampling_hint
        pitch = self.pitch or ds.default_pitch(lam, tmax)
        grid = ds.VoxelGrid.around(1.3 * float(np.asarray(shape.bounding_radius())), pitch)
        sig = expected_signal(
            shape, self.experiment, grid, method=self.method, polarisation=self.polarisation
        )
        return np.asarray(sig) * float(res["scale"][i])
