"""`FitResult`: what a fit returns, and its HDF5 / JSON files (written atomically)."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

import diffscat as ds

__all__ = ["FitResult", "Alternative", "shape_parameters"]


@dataclasses.dataclass
class Alternative:
    """Another start that fits almost as well (e.g. the twin/mirror solution): its shape, its loss minus the
    best loss (NLL units) and its free parameters in physical units."""

    model: ds.AbstractShape
    delta_loss: float
    values: dict[str, np.ndarray]
    u: Any = dataclasses.field(repr=False, default=None)


def shape_parameters(shape: ds.AbstractShape) -> dict[str, np.ndarray]:
    """All real array leaves of a shape by field name (complex leaves as real/imag pairs)."""
    out = {}
    for f in dataclasses.fields(shape):
        v = getattr(shape, f.name, None)
        if hasattr(v, "dtype") and hasattr(v, "shape") and not f.metadata.get("static", False):
            a = np.asarray(v)
            out[f.name] = np.stack([a.real, a.imag], -1) if np.iscomplexobj(a) else a
    return out


@dataclasses.dataclass
class FitResult:
    """Result of `fitting.fit`.

    - `model`: fitted shape, same type as the initial model; `experiment`: with fitted leaves (beam centre...).
    - `scale`: fitted fluence factor (counts per unit of `fitting.expected_signal`); `background`: counts/pixel.
    - `loss`: final summed negative log-likelihood; `loss_kind`: the loss's `name` (stored in files);
      `loss_function`: the `fitting.AbstractLoss` instance used (None when unknown: then `loss_kind` is looked
      up in `fitting.LOSSES`); `loss_history`: per optimiser step (best start).
    - `free`, `values`, `sigmas`: free parameter names, fitted values and 1-sigma uncertainties in physical units
      (orientation: rotation matrix / degrees about the fitted body axes); `hessian_ok`: curvature positive.
    - `n_steps`, `converged`, `time_s` (wall, including compilation), `compile_s` (first step).
    - `alternatives`: other starts within `alternatives_tol` of the best; `start_losses`: every start's NLL.
    - `data`, `mask`, `model_counts`: the fitted image (expected counts) for residual maps.
    - `grid`: the fixed voxel grid used; `stages`: for ladder fits, every stage's result.
    - `ranking`: for `fitting.fit_auto`, [(class name, loss, number of parameters, criterion), ...] best first;
      `pruned`: [(class name, search deviance / best), ...] of the polyhedra its orientation search ruled out;
      `network_pruned`: [(class name, network probability), ...] of those `network_min_prob` ruled out.
    - `delta_sign`: for `fitting.fit_auto` with delta fitted, how the sign of delta was settled
      (`fitting.keep_delta_sign`): None (not checked: the fit kept the start's sign), "kept" (the fit had
      crossed to the other sign, but the start's sign fits within the tolerance: kept, the other is an
      alternative) or "data" (the other sign fits better by more than the tolerance).
    - `escapes`: for `fitting.harmonics_ladder` (and the fits that run it) when its result was a misfit:
      [(route, loss, z), ...] in the order run, the first being the ladder itself ("ladder"), then the other
      routes tried ("all_degrees", "coarse_last"); None when the ladder's result was consistent with the noise.
    - `size_pin`: for `fitting.fit_from_network`'s ellipsoid, the sphere fit whose radius its starts took
      (None: the network's size).
    """

    model: ds.AbstractShape
    experiment: ds.Experiment
    scale: float
    background: float
    loss: float
    loss_kind: str
    loss_history: np.ndarray
    free: tuple[str, ...]
    values: dict[str, np.ndarray]
    sigmas: dict[str, np.ndarray]
    hessian_ok: bool
    n_steps: int
    converged: bool
    time_s: float
    compile_s: float
    n_used: int
    n_starts: int
    start_losses: np.ndarray
    alternatives: list[Alternative]
    data: np.ndarray = dataclasses.field(repr=False)
    mask: np.ndarray = dataclasses.field(repr=False)
    model_counts: np.ndarray = dataclasses.field(repr=False)
    grid: ds.VoxelGrid | None = dataclasses.field(repr=False, default=None)
    stages: list | None = dataclasses.field(repr=False, default=None)
    loss_function: Any = dataclasses.field(repr=False, default=None)
    ranking: list | None = dataclasses.field(repr=False, default=None)
    pruned: list | None = dataclasses.field(repr=False, default=None)
    network_pruned: list | None = dataclasses.field(repr=False, default=None)
    delta_sign: str | None = dataclasses.field(repr=False, default=None)
    escapes: list | None = dataclasses.field(repr=False, default=None)
    size_pin: Any = dataclasses.field(repr=False, default=None)

    def residuals(self) -> np.ndarray:
        """Signed deviance-type residual map for the fit's loss (NaN at masked pixels)."""
        from ._losses import as_loss

        loss = as_loss(self.loss_kind if self.loss_function is None else self.loss_function)
        return np.asarray(loss.residuals(self.model_counts, self.data, self.mask, scale=1.0, background=0.0))

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary: parameters with sigmas, scale, loss, timing, alternatives."""

        def lst(a):
            return np.asarray(a, float).tolist()

        return {
            "model_type": type(self.model).__name__,
            "model_parameters": {k: lst(v) for k, v in shape_parameters(self.model).items()},
            "free": list(self.free),
            "values": {k: lst(v) for k, v in self.values.items()},
            "sigmas": {k: lst(v) for k, v in self.sigmas.items()},
            "sigma_units": {"orientation": "deg"} if "orientation" in self.free else {},
            "hessian_ok": self.hessian_ok,
            "scale": self.scale,
            "background": self.background,
            "loss": self.loss,
            "loss_kind": self.loss_kind,
            "loss_function": self.loss_kind if self.loss_function is None else repr(self.loss_function),
            "loss_per_pixel": self.loss / max(self.n_used, 1),
            "n_used_pixels": self.n_used,
            "n_steps": self.n_steps,
            "converged": self.converged,
            "time_s": self.time_s,
            "compile_s": self.compile_s,
            "n_starts": self.n_starts,
            "start_losses": lst(self.start_losses),
            "alternatives": [
                {"delta_loss": a.delta_loss, "values": {k: lst(v) for k, v in a.values.items()}}
                for a in self.alternatives
            ],
            "wavelength": float(np.asarray(self.experiment.wavelength)),
            "detector": type(self.experiment.detector).__name__,
            **({"principal_axes": axes} if (axes := self.principal_axes()) else {}),
        }

    def principal_axes(self) -> list[dict[str, Any]]:
        """A fitted ellipsoid's principal axes, shortest first: `semi_axis` and `semi_axis_sigma` [length
        unit of the fit], `direction` (unit vector, lab frame; its sign is arbitrary) and
        `direction_sigma_deg` (`fitting.ellipsoid_axis_sigmas`). Empty for other classes or when the
        semi-axes and orientation were not both free with sigmas."""
        import diffscat as ds

        from ._metrics import _sorted_axes, ellipsoid_axis_sigmas

        if not isinstance(self.model, ds.Ellipsoid) or not {"semi_axes", "orientation"} <= set(self.sigmas):
            return []
        sig_a, sig_d = ellipsoid_axis_sigmas(self)
        a, R = _sorted_axes(self.model)
        return [
            {
                "semi_axis": float(a[i]),
                "semi_axis_sigma": float(sig_a[i]),
                "direction": R[:, i].tolist(),
                "direction_sigma_deg": float(sig_d[i]),
            }
            for i in range(3)
        ]

    def save_json(self, path: str | os.PathLike) -> str:
        """Write `summary()` as JSON (atomic: temporary file + rename). Returns the path."""
        text = json.dumps(self.summary(), indent=2)

        def write(tmp):
            with open(tmp, "w") as f:
                f.write(text)

        return _atomic_write(path, write)

    def save_hdf5(self, path: str | os.PathLike) -> str:
        """Write the summary (as attributes and datasets), loss history, data, mask, model and residual
        images to HDF5 (atomic). Returns the path."""
        import h5py

        summ = self.summary()

        def write(tmp):
            with h5py.File(tmp, "w") as f:
                g = f.create_group("fit")
                for k in ("model_type", "loss_kind", "detector"):
                    g.attrs[k] = summ[k]
                for k in ("scale", "background", "loss", "time_s", "compile_s", "wavelength"):
                    g.attrs[k] = float(summ[k])
                for k in ("n_steps", "n_used_pixels", "n_starts"):
                    g.attrs[k] = int(summ[k])
                g.attrs["converged"] = bool(self.converged)
                g.attrs["hessian_ok"] = bool(self.hessian_ok)
                g.attrs["free"] = json.dumps(list(self.free))
                g.attrs["summary_json"] = json.dumps(summ)
                g.create_dataset("loss_history", data=np.asarray(self.loss_history, float))
                g.create_dataset("start_losses", data=np.asarray(self.start_losses, float))
                mp = g.create_group("model")
                for k, v in shape_parameters(self.model).items():
                    mp.create_dataset(k, data=v)
                for name, dct in (("values", self.values), ("sigmas", self.sigmas)):
                    gg = g.create_group(name)
                    for k, v in dct.items():
                        gg.create_dataset(k, data=np.asarray(v, float))
                im = g.create_group("images")
                im.create_dataset("data", data=self.data, compression="gzip")
                im.create_dataset("mask", data=self.mask.astype(np.uint8), compression="gzip")
                im.create_dataset("model", data=self.model_counts, compression="gzip")
                im.create_dataset("residuals", data=self.residuals(), compression="gzip")

        return _atomic_write(path, write)


def _atomic_write(path, writer) -> str:
    from diffscat._files import atomic_output

    path = os.fspath(path)
    with atomic_output(path) as tmp:
        writer(tmp)
    return path
