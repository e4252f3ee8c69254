"""CXI (HDF5) files: read and write diffraction images, masks, detector geometry and simulation truth.

Layout written (CXI 1.6; SI units in the file, the user's length unit chosen explicitly on the way in/out):

    /cxi_version                                     160
    /entry_1/instrument_1/source_1/energy            photon energy, J
    /entry_1/instrument_1/source_1/wavelength        m
    /entry_1/instrument_1/detector_1/data            (ny, nx) or (N, ny, nx); attrs quantity, units
    /entry_1/instrument_1/detector_1/mask            uint32 (ny, nx), 0 = good (CXI bits)
    /entry_1/instrument_1/detector_1/distance        m
    /entry_1/instrument_1/detector_1/x_pixel_size    m
    /entry_1/instrument_1/detector_1/y_pixel_size    m
    /entry_1/instrument_1/detector_1/corner_position (x, y, z) of the corner of the FIRST pixel, m
    /entry_1/instrument_1/detector_1/basis_vectors   (2, 3): lab step per row, per column, m
    /entry_1/data_1/data                             soft link to the detector data
    /entry_1/sample_1/truth/                         shape type + parameters (stacked for N patterns)
    /entry_1/diffscat/                               versions, seed, config text, exact user-unit geometry

Pixel (iy, ix) has its centre at corner_position + (iy + 1/2) b_row + (ix + 1/2) b_col. The beam (+z) hits
the detector at the point with fractional indices (cy, cx) = `FlatDetector.center`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from .._experiment import Experiment
from .._files import atomic_output, check_input_file
from ..detectors._base import DETECTOR_TYPES
from ..detectors._masks import CXI_INVALID, from_cxi_bitmask
from ..detectors._photons import PLANCK, SPEED_OF_LIGHT
from ._shape_io import put_attr, read_shape_group, shape_to_dict, write_shape_group
from ._units import LENGTH_UNITS, length_unit_m

__all__ = [
    "CXIData",
    "LazyStack",
    "CXIWriter",
    "write_cxi",
    "read_cxi",
    "list_entries",
    "experiment_from_cxi",
    "NaNPixelWarning",
    "open_hdf5",
]

HC = PLANCK * SPEED_OF_LIGHT
DET = "instrument_1/detector_1"
SRC = "instrument_1/source_1"
# Detector type of files without a diffscat detector group: the CXI flat-plane geometry.
_FOREIGN_DETECTOR = "flat"
QUANTITIES = {"dsigma_domega": ("m^2/sr", 2), "photons": ("photons", 0), "detector_units": ("adu", 0)}


class NaNPixelWarning(UserWarning):
    """Data had NaN / inf pixels; they were set to 0 and masked out."""


def _versions() -> dict[str, str]:
    import h5py
    import jax

    from .. import __version__

    return {
        "diffscat": __version__,
        "jax": jax.__version__,
        "h5py": h5py.__version__,
        "numpy": np.__version__,
    }


# ----------------------------------------------------------------------------------------------- geometry


def _read_scalar(g, name):
    v = np.asarray(g[name][()], dtype=float)
    return float(v.reshape(-1)[0])


def _find(f, entry: str, rel: str, *fallbacks: str):
    for p in (f"{entry}/{rel}", *fallbacks):
        if p in f:
            return f[p]
    return None


def experiment_from_cxi(
    f, entry: str, image_shape: tuple[int, int], length_unit: str
) -> tuple[Experiment | None, tuple[bool, bool]]:
    """Build the Experiment stored in an open h5py file's `entry` (user length unit).

    Returns (experiment or None when the file lacks a wavelength/energy, (flip_rows, flip_cols)); data must be
    flipped along the flagged axes when the file's basis vectors point along -y / -x.
    """
    u = length_unit_m(length_unit)
    # Wavelength: explicit wavelength (m) or photon energy (J; eV tolerated with a warning).
    src = _find(f, entry, SRC, "source", "source_1")
    wavelength = None
    if src is not None:
        if "wavelength" in src:
            wavelength = _read_scalar(src, "wavelength") / u
        elif "energy" in src:
            e = _read_scalar(src, "energy")
            if e > 1e-10:  # no photon has 0.6 GJ: this is in eV
                warnings.warn(f"{src.name}/energy = {e:g} looks like eV, not J; read as eV", stacklevel=3)
                e = e * 1.602176634e-19
            if e <= 0:
                raise ValueError(f"{src.name}/energy must be positive, got {e}")
            wavelength = HC / e / u
    if wavelength is None:
        return None, (False, False)
    # The detector type written by CXIWriter (registry name); files from elsewhere hold CXI flat-plane geometry.
    saved = f.get(f"{entry}/diffscat/detector")
    name = saved.attrs.get("type") if saved is not None else None
    name = name.decode() if isinstance(name, bytes) else name
    if name is not None and name not in DETECTOR_TYPES:  # e.g. "Directions": written without geometry
        return None, (False, False)
    cls = DETECTOR_TYPES[_FOREIGN_DETECTOR if name is None else name]
    det, flips = cls.from_cxi(_find(f, entry, DET, "detector", "detector_1"), saved, image_shape, u)
    if det is None:
        return None, (False, False)
    # Files written here also hold the exact user-unit wavelength: use it when it agrees (bit-exact round trip).
    dg = f.get(f"{entry}/diffscat")
    if dg is not None and "wavelength_user" in dg.attrs and dg.attrs.get("length_unit") in LENGTH_UNITS:
        if length_unit_m(dg.attrs["length_unit"]) == u:
            wl = float(dg.attrs["wavelength_user"])
            if math.isclose(wl, wavelength, rel_tol=1e-9):
                wavelength = wl
    return Experiment(wavelength, det), flips


# ----------------------------------------------------------------------------------------------- reading


def _external_links(f) -> list[tuple[str, str, str]]:
    """(link name, target file, target path) of every HDF5 external link in an open file."""
    import h5py

    found = []

    def visit(name, link):
        if isinstance(link, h5py.ExternalLink):
            found.append((name, link.filename, link.path))

    f.visititems_links(visit)
    return found


def open_hdf5(path, *, allow_external: bool = False, name: str = "input"):
    """Open an HDF5 file read-only, with one-line errors naming the path: FileNotFoundError,
    IsADirectoryError, PermissionError, or ValueError for a file that is not HDF5 (truncated, random bytes).

    External links (datasets living in other files) are refused unless `allow_external`: a file could
    otherwise make `info` print, and `fit` fit, data from any other file the user can read."""
    import h5py

    path = check_input_file(path, name)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        reason = " ".join(str(e).split())
        raise ValueError(
            f"{path} is not a readable HDF5/CXI file (truncated or not HDF5: {reason})"
        ) from None
    if not allow_external:
        links = _external_links(f)
        if links:
            f.close()
            n, target, tpath = links[0]
            more = f" and {len(links) - 1} more" if len(links) > 1 else ""
            raise ValueError(
                f"{path}: /{n} is an HDF5 external link to {target}:{tpath}{more}; external links are "
                "refused (pass allow_external=True, or --allow-external-links on the command line)"
            )
    return f


class LazyStack:
    """A read-only view of an (N, ny, nx) image stack in an HDF5 file, read frame by frame or in chunks.

    Indexing (`stack[i]`, `stack[a:b]`) reads only those frames, converted to the user's unit and flipped
    to the +x / +y orientation; NaN / inf pixels become 0 (see `masks_for`). The file is opened per read,
    so the object can be kept around and passed between processes.
    """

    def __init__(self, path, dataset: str, scale: float, flips: tuple[bool, bool], mask):
        import h5py

        self.path, self.dataset, self.scale, self.flips = os.fspath(path), dataset, scale, flips
        self.base_mask = mask
        with h5py.File(self.path, "r") as f:
            ds = f[dataset]
            self.shape = tuple(ds.shape)
            self.dtype = ds.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def _fix(self, a):
        a = np.asarray(a, dtype=np.result_type(self.dtype, np.float32)) * self.scale
        if self.flips[0]:
            a = a[..., ::-1, :]
        if self.flips[1]:
            a = a[..., ::-1]
        return np.ascontiguousarray(a)

    def __getitem__(self, idx):
        import h5py

        with h5py.File(self.path, "r") as f:
            a = self._fix(f[self.dataset][idx])
        bad = ~np.isfinite(a)
        if bad.any():
            warnings.warn(
                f"{self.path}:{self.dataset}: {int(bad.sum())} NaN/inf pixel(s) set to 0 and masked",
                NaNPixelWarning,
                stacklevel=2,
            )
            a = np.where(bad, 0.0, a).astype(a.dtype)
        return a

    def masks_for(self, idx) -> np.ndarray:
        """Use-masks (True = good) of the frames `idx`: the file mask and the finite pixels."""
        import h5py

        with h5py.File(self.path, "r") as f:
            a = self._fix(f[self.dataset][idx])
        m = np.isfinite(a)
        if self.base_mask is None:
            return m
        base = self.base_mask[idx] if self.base_mask.ndim == 3 else self.base_mask  # per-frame or shared
        return m & base

    def chunks(self, size: int = 64) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (start, frames[start:start + size]) through the stack; only one chunk is in memory."""
        if size < 1:
            raise ValueError(f"chunk size must be >= 1, got {size}")
        for s in range(0, len(self), size):
            yield s, self[s : s + size]

    def __repr__(self) -> str:
        return f"LazyStack({self.path!r}, {self.dataset!r}, shape={self.shape})"


@dataclasses.dataclass
class CXIData:
    """What `read_cxi` returns.

    - `data`: one image (ny, nx) as a NumPy array, or a `LazyStack` for (N, ny, nx); user units
      (dsigma/dOmega in length_unit^2/sr, photons or detector units as stored).
    - `mask`: boolean use-mask (ny, nx), or (N, ny, nx) for per-frame file masks (True = good; the file's
      bitmask, and for a single image its non-finite pixels) or None. Stacks: `data.masks_for(i)`.
    - `experiment`: the `Experiment` (FlatDetector from the CXI geometry) or None if the file has none.
    - `truth`: shape dict (`shape_from_dict(truth, i)` rebuilds pattern i) or None; `extras`: per-pattern
      arrays (e.g. fluence) and file attributes (seed, versions, config).
    """

    data: Any
    mask: np.ndarray | None
    experiment: Experiment | None
    truth: dict | None
    extras: dict
    quantity: str | None
    path: str
    entry: str

    @property
    def n_images(self) -> int:
        return 1 if isinstance(self.data, np.ndarray) and self.data.ndim == 2 else len(self.data)


def list_entries(path, *, allow_external: bool = False) -> list[str]:
    """Names of the /entry_N groups of a CXI file, in numeric order (see `open_hdf5` for the errors)."""
    with open_hdf5(path, allow_external=allow_external) as f:
        names = [k for k in f if k.startswith("entry_") and k[6:].isdigit()]
    return sorted(names, key=lambda k: int(k[6:]))


def _entry_name(entry) -> str:
    if isinstance(entry, int | np.integer):
        return f"entry_{int(entry)}"
    if isinstance(entry, str):
        return entry.strip("/")
    raise TypeError(f"entry must be an int or a name like 'entry_2', got {entry!r}")


def read_cxi(
    path,
    *,
    length_unit: str,
    entry: int | str | None = None,
    data_path: str | None = None,
    allow_external: bool = False,
) -> CXIData:
    """Read one entry of a CXI file (or any HDF5 dataset by path) in the user's length unit.

    **Arguments:**
    - `path`: the file.
    - `length_unit`: the user's length unit ("nm", "um", "A", ...): distances, pixel sizes, wavelength and
      dsigma/dOmega are converted from the file's SI units into it.
    - `entry`: entry number or name (multi-entry files like CXIDB id-94 have /entry_1, /entry_2, ...);
      default 1.
    - `data_path`: read this dataset instead of the entry's detector data (plain HDF5 files); geometry,
      mask and truth then come from `entry` only when it is given explicitly.

    Single images are read whole; stacks come back as a `LazyStack`. NaN / inf pixels are set to 0, masked
    out and reported with a `NaNPixelWarning`. Raises FileNotFoundError / IsADirectoryError /
    PermissionError / ValueError naming the path and what is missing or malformed (not HDF5, truncated,
    dataset, rank, dtype, mask shape). HDF5 external links are refused unless `allow_external=True`.
    """
    path = os.fspath(path)
    u = length_unit_m(length_unit)
    ent = _entry_name(1 if entry is None else entry)
    if data_path is not None and entry is None:
        ent = "__none__"
    f = open_hdf5(path, allow_external=allow_external)
    try:
        return _read_open(f, path, u, ent, entry, data_path, length_unit)
    except OSError as e:  # h5py: a damaged file that opened (truncated data, bad chunks)
        reason = " ".join(str(e).split())
        raise ValueError(f"{path}: damaged HDF5 file, could not read it ({reason})") from None
    finally:
        f.close()


def _read_open(f, path, u, ent, entry, data_path, length_unit) -> CXIData:
    import h5py

    # Old files: top-level /detector (and /source) groups, no /entry_N.
    old = data_path is None and entry is None and "entry_1" not in f and "detector/data" in f
    if old:
        ent = ""
    has_ent = old or ent in f
    if data_path is None and not old:
        if ent not in f:
            raise ValueError(f"{path}: no group /{ent} (entries: {list_entries(path) or 'none'})")
        cands = [f"{ent}/{DET}/data", f"{ent}/data_1/data", f"{ent}/image_1/data", "detector/data"]
        dpath = next((c for c in cands if c in f), None)
        if dpath is None:
            raise ValueError(f"{path}: missing dataset /{ent}/{DET}/data (also looked at {cands[1:]})")
    elif old:
        dpath = "detector/data"
    else:
        dpath = data_path.lstrip("/")
        if dpath not in f or not isinstance(f[dpath], h5py.Dataset):
            raise ValueError(f"{path}: missing dataset /{dpath}")
    ds = f[dpath]
    ndim = ds.ndim
    if not (np.issubdtype(ds.dtype, np.number) or ds.dtype == bool) or np.issubdtype(
        ds.dtype, np.complexfloating
    ):
        raise ValueError(f"{path}:/{dpath} must hold real numbers, got dtype {ds.dtype}")
    if ds.ndim not in (2, 3):
        raise ValueError(f"{path}:/{dpath} must have rank 2 (ny, nx) or 3 (N, ny, nx), got shape {ds.shape}")
    img_shape = tuple(ds.shape[-2:])
    quantity = ds.attrs.get("quantity")
    quantity = quantity.decode() if isinstance(quantity, bytes) else quantity
    scale = 1.0 / u**2 if quantity == "dsigma_domega" else 1.0
    experiment, flips = experiment_from_cxi(f, ent, img_shape, length_unit) if has_ent else (None, (0, 0))
    mask = None
    mg = _find(f, ent, f"{DET}/mask", f"{ent}/data_1/mask", "detector/mask") if has_ent else None
    if mg is not None:
        m = np.asarray(mg[()])
        if m.shape[-2:] != img_shape or m.ndim not in (2, ds.ndim):
            raise ValueError(f"{path}:{mg.name} has shape {m.shape}, but the data's images are {img_shape}")
        mask = from_cxi_bitmask(m) if m.dtype != bool else m
        if flips[0]:
            mask = mask[..., ::-1, :]
        if flips[1]:
            mask = mask[..., ::-1]
        mask = np.ascontiguousarray(mask)
    truth, extras = None, {}
    tg = f.get(f"{ent}/sample_1/truth")
    if tg is not None:
        truth = read_shape_group(tg["shape"]) if "shape" in tg else None
        for k, v in tg.items():
            if k != "shape" and isinstance(v, h5py.Dataset):
                extras[k] = v[()]
    dg = f.get(f"{ent}/diffscat")
    if dg is not None:
        for k, v in dg.attrs.items():
            extras[k] = v.decode() if isinstance(v, bytes) else v
    if ds.ndim == 2:
        data = np.asarray(ds[()], dtype=np.result_type(ds.dtype, np.float32)) * scale
        if flips[0]:
            data = data[::-1, :]
        if flips[1]:
            data = data[:, ::-1]
        data = np.ascontiguousarray(data)
    if ndim == 2:
        bad = ~np.isfinite(data)
        if bad.any():
            warnings.warn(
                f"{path}:/{dpath}: {int(bad.sum())} NaN/inf pixel(s) set to 0 and masked out",
                NaNPixelWarning,
                stacklevel=2,
            )
            data = np.where(bad, 0.0, data).astype(data.dtype)
            mask = ~bad if mask is None else (mask & ~bad)
    else:
        data = LazyStack(path, dpath, scale, flips, mask)
    return CXIData(data, mask, experiment, truth, extras, quantity, path, ent)


# ----------------------------------------------------------------------------------------------- writing


class CXIWriter:
    """Streams images (and per-image truth) into one CXI file, written atomically.

    Use as a context manager: images go to a temporary file in the target folder, which replaces `path` only
    when the block ends without an error. Refuses to overwrite a file that is open for reading as input
    (pass `protect=` paths) and, unless `overwrite=True`, any existing file.

    **Arguments:**
    - `path`: output .cxi file.
    - `image_shape`: (ny, nx).
    - `experiment`: the Experiment (geometry written in SI; FlatDetector as CXI geometry, QGrid/AngleGrid as
      diffscat attributes) or None.
    - `length_unit`: the user's length unit of `experiment` and the shapes.
    - `quantity`: "dsigma_domega" (converted to m^2/sr), "photons" or "detector_units".
    - `mask`: boolean use-mask (True = good) or a CXI uint32 bitmask, (ny, nx); optional.
    - `dtype`: stored dtype of the images (default float32).
    - `attrs`: extra attributes for /entry_1/diffscat (seed, config text, ...).
    """

    def __init__(
        self,
        path,
        image_shape,
        experiment: Experiment | None,
        *,
        length_unit: str,
        quantity: str = "dsigma_domega",
        mask=None,
        dtype=np.float32,
        attrs: dict | None = None,
        overwrite: bool = True,
        protect=(),
        chunk_frames: int = 16,
        single: bool = False,
    ):
        self.path = os.path.abspath(os.fspath(path))
        for p in protect:
            if os.path.exists(p) and os.path.exists(self.path) and os.path.samefile(p, self.path):
                raise ValueError(f"refusing to overwrite the input file {path}")
        if os.path.exists(self.path) and not overwrite:
            raise FileExistsError(f"{path} exists (pass overwrite=True)")
        if quantity not in QUANTITIES:
            raise ValueError(f"quantity must be one of {sorted(QUANTITIES)}, got {quantity!r}")
        self.u = length_unit_m(length_unit)
        self.length_unit = length_unit
        self.image_shape = tuple(int(v) for v in image_shape)
        if len(self.image_shape) != 2:
            raise ValueError(f"image_shape must be (ny, nx), got {image_shape}")
        if experiment is not None and tuple(experiment.shape) != self.image_shape:
            raise ValueError(
                f"experiment detector shape {experiment.shape} != image shape {self.image_shape}"
            )
        self.quantity = quantity
        self.scale = self.u ** QUANTITIES[quantity][1]
        self.experiment, self.mask, self.dtype = experiment, mask, np.dtype(dtype)
        self.attrs = dict(attrs or {})
        self.chunk_frames = chunk_frames
        self.single = bool(single)
        self.n = 0
        self._truth_keys: dict[str, Any] = {}
        self._shape_type: str | None = None
        self._static_fields: dict[str, Any] = {}
        self._f = None

    def __enter__(self) -> CXIWriter:
        import h5py

        self._ctx = atomic_output(self.path, suffix=".cxi")
        self._tmp = self._ctx.__enter__()
        try:
            self._f = h5py.File(self._tmp, "w")
            self._setup()
        except BaseException as e:
            if self._f is not None:
                self._f.close()
                self._f = None
            self._ctx.__exit__(type(e), e, e.__traceback__)
            raise
        return self

    def _setup(self):
        import h5py

        f, u = self._f, self.u
        f.create_dataset("cxi_version", data=160)
        e = f.create_group("entry_1")
        ny, nx = self.image_shape
        if self.single:
            ds = e.create_dataset(f"{DET}/data", shape=(ny, nx), dtype=self.dtype)
        else:
            ds = e.create_dataset(
                f"{DET}/data",
                shape=(0, ny, nx),
                maxshape=(None, ny, nx),
                dtype=self.dtype,
                chunks=(max(1, min(self.chunk_frames, 4096 * 4096 // (ny * nx))), ny, nx),
                compression="gzip",
                compression_opts=1,
            )
        ds.attrs["quantity"] = self.quantity
        ds.attrs["units"] = QUANTITIES[self.quantity][0]
        ds.attrs["axes"] = "experiment_identifier:y:x"
        e["data_1/data"] = h5py.SoftLink(f"/entry_1/{DET}/data")
        g = e[DET]
        dg = e.create_group("diffscat")
        for k, v in _versions().items():
            dg.attrs[f"version_{k}"] = v
        dg.attrs["length_unit"] = self.length_unit
        for k, v in self.attrs.items():
            dg.attrs[k] = v
        if self.mask is not None:
            m = np.asarray(self.mask)
            if m.shape != self.image_shape:
                raise ValueError(f"mask shape {m.shape} != image shape {self.image_shape}")
            bits = np.where(m, 0, CXI_INVALID).astype(np.uint32) if m.dtype == bool else m.astype(np.uint32)
            g.create_dataset("mask", data=bits)
        exp = self.experiment
        if exp is not None:
            lam = float(exp.wavelength)
            s = e.create_group(SRC)
            s.create_dataset("energy", data=np.float64(HC / (lam * u)))
            s["energy"].attrs["units"] = "J"
            s.create_dataset("wavelength", data=np.float64(lam * u))
            s["wavelength"].attrs["units"] = "m"
            dg.attrs["wavelength_m"] = lam * u
            dg.attrs["wavelength_user"] = lam
            det = exp.detector
            sd = dg.create_group("detector")
            sd.attrs["type"] = det.type_name or type(det).__name__
            if not det.to_cxi(g, sd, u):
                warnings.warn(f"{type(det).__name__} geometry is not stored in CXI files", stacklevel=3)

    def append(self, images, shapes=None, **per_image) -> None:
        """Append images (ny, nx) or (n, ny, nx) in the user's units.

        `shapes`: their truth as one stacked batch of n shapes (`diffscat.stack`; every array field has a
        leading axis of n), or, for a single-image file, the one shape; `per_image`: other per-image values
        as arrays with a leading axis of n (e.g. fluence=...)."""
        if self._f is None:
            raise RuntimeError("CXIWriter must be used inside a `with` block")
        a = np.asarray(images)
        if a.ndim == 2:
            a = a[None]
        if a.ndim != 3 or a.shape[1:] != self.image_shape:
            raise ValueError(
                f"images must be (n, {self.image_shape[0]}, {self.image_shape[1]}), got {a.shape}"
            )
        n = a.shape[0]
        ds = self._f[f"entry_1/{DET}/data"]
        if self.single:
            if self.n or n != 1:
                raise ValueError("a single-image CXIWriter takes exactly one image")
            ds[...] = (a[0] * self.scale).astype(self.dtype)
            if shapes is not None:
                write_shape_group(self._f.create_group("entry_1/sample_1/truth/shape"), shape_to_dict(shapes))
        else:
            ds.resize(self.n + n, axis=0)
            ds[self.n : self.n + n] = (a * self.scale).astype(self.dtype)
            if shapes is not None:
                self._append_truth(shape_to_dict(shapes), n)
            elif self._shape_type is not None:
                raise ValueError("shape truth must be given for every image or for none")
        for k, v in per_image.items():
            v = np.asarray(v)
            if v.ndim == 0 or v.shape[0] != n:
                raise ValueError(
                    f"per-image value {k!r} must have a leading axis of {n}, got shape {v.shape}"
                )
            self._append_array(f"entry_1/sample_1/truth/{k}", v)
        self.n += n

    def _append_array(self, name, v):
        f = self._f
        if name not in f:
            if self.n:
                raise ValueError(f"truth {name} must be given for every image or for none")
            f.create_dataset(name, shape=(0,) + v.shape[1:], maxshape=(None,) + v.shape[1:], dtype=v.dtype)
        ds = f[name]
        if ds.shape[0] != self.n:
            raise ValueError(f"truth {name} has {ds.shape[0]} rows for {self.n} images: give it every time")
        ds.resize(self.n + v.shape[0], axis=0)
        ds[self.n :] = v

    def _append_truth(self, d, n):
        if self._shape_type is None:
            if self.n:
                raise ValueError("shape truth must be given for every image or for none")
            self._shape_type = d["type"]
        elif d["type"] != self._shape_type:
            raise ValueError(
                f"all shapes in one file must have one type, got {d['type']} after {self._shape_type}"
            )
        self._append_group("entry_1/sample_1/truth/shape", d, n)

    def _append_group(self, path, d, n):
        """Append one stacked shape dict below `path` (nested shapes become subgroups)."""
        g = self._f.require_group(path)
        if "__list__" in d:
            g.attrs["__list__"] = len(d["__list__"])
            for i, item in enumerate(d["__list__"]):
                self._append_group(f"{path}/{i}", item, n)
            return
        g.attrs["type"] = d["type"]
        for k, v in d["fields"].items():
            if isinstance(v, np.ndarray):
                if v.ndim == 0 or v.shape[0] != n:
                    raise ValueError(
                        f"truth field {k} has shape {v.shape}: pass the {n} shapes stacked (diffscat.stack)"
                    )
                self._append_array(f"{path}/{k}", v)
            elif isinstance(v, dict):
                self._append_group(f"{path}/{k}", v, n)
            elif (path, k) not in self._static_fields:
                self._static_fields[(path, k)] = v
                put_attr(g, k, v)

    def __exit__(self, exc_type, exc, tb):
        f, self._f = self._f, None
        ctx, self._ctx = self._ctx, None
        try:
            f.close()
            if exc_type is None and self.n == 0:
                raise ValueError("no images were written")
        except BaseException as e:
            ctx.__exit__(type(e), e, e.__traceback__)
            raise
        ctx.__exit__(exc_type, exc, tb)  # renames the temporary on success, removes it on an error
        return False


def write_cxi(
    path,
    data,
    experiment: Experiment | None = None,
    *,
    length_unit: str,
    quantity: str = "dsigma_domega",
    mask=None,
    truth=None,
    per_image: dict | None = None,
    attrs: dict | None = None,
    dtype=None,
    overwrite: bool = True,
    protect=(),
) -> str:
    """Write one image (ny, nx) or a stack (N, ny, nx) to a CXI file (atomically). Returns the path.

    A single image is stored as (ny, nx), a stack as (N, ny, nx). `truth`: the shape (or stacked shapes) that
    made the data; `per_image`: other per-image truths (e.g. fluence); `attrs`: extra file attributes (seed,
    config). See `CXIWriter` for the other arguments and the module docstring for the layout.
    """
    a = np.asarray(data)
    if a.ndim not in (2, 3):
        raise ValueError(f"data must be (ny, nx) or (N, ny, nx), got shape {a.shape}")
    dtype = dtype or (a.dtype if np.issubdtype(a.dtype, np.floating) else np.float64)
    w = CXIWriter(
        path,
        a.shape[-2:],
        experiment,
        length_unit=length_unit,
        quantity=quantity,
        mask=mask,
        dtype=dtype,
        attrs=attrs,
        overwrite=overwrite,
        protect=protect,
        single=a.ndim == 2,
    )
    with w:
        w.append(a, truth, **(per_image or {}))
    return w.path
