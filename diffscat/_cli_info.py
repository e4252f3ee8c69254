"""`diffscat info FILE`: summarise a CXI / HDF5 file (entries, datasets, geometry, truth, provenance)."""

from __future__ import annotations

import argparse
import os

import numpy as np

__all__ = ["add_arguments", "run", "summarise"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a CXI or HDF5 file")
    p.add_argument("--length-unit", default="nm", help="length unit for the geometry shown (default nm)")
    p.add_argument("--tree", action="store_true", help="also list every group and dataset")
    p.add_argument("--stats", action="store_true", help="pixel statistics of the first image of each entry")
    p.add_argument(
        "--allow-external-links",
        action="store_true",
        help="follow HDF5 external links to other files (refused by default)",
    )


def _tree(f) -> list[str]:
    import h5py

    lines = []

    def visit(name, obj):
        depth = name.count("/")
        if isinstance(obj, h5py.Dataset):
            lines.append(f"{'  ' * depth}{name.split('/')[-1]}  {obj.shape} {obj.dtype}")
        else:
            lines.append(f"{'  ' * depth}{name.split('/')[-1]}/")

    f.visititems(visit)
    return lines


def summarise(
    path, length_unit: str = "nm", tree: bool = False, stats: bool = False, allow_external: bool = False
) -> str:
    """A human-readable summary of a CXI / HDF5 file (HDF5 external links refused unless `allow_external`)."""
    from .io import list_entries, read_cxi
    from .io._cxi import open_hdf5

    path = os.fspath(path)
    f = open_hdf5(path, allow_external=allow_external)
    out = [f"{path}  ({os.path.getsize(path) / 1e6:.2f} MB)"]
    with f:
        if "cxi_version" in f:
            out.append(f"CXI version {int(np.asarray(f['cxi_version'][()]))}")
        entries = list_entries(path, allow_external=allow_external)
        if tree or not entries:
            out += _tree(f)
    if not entries:
        out.append("no /entry_N groups: not a CXI file (read datasets with read_cxi(path, data_path=...))")
    for k, ent in enumerate(entries):
        if k >= 5:
            out.append(f"... and {len(entries) - 5} more entries")
            break
        try:
            d = read_cxi(path, length_unit=length_unit, entry=ent, allow_external=allow_external)
        except ValueError as e:
            out.append(f"/{ent}: {e}")
            continue
        shp = d.data.shape
        out.append(
            f"/{ent}: {d.n_images} image(s) of {shp[-2]} x {shp[-1]}, quantity {d.quantity or 'unknown'}"
        )
        if d.mask is not None:
            out.append(f"  mask: {int((~d.mask).sum())} of {d.mask.size} pixels excluded")
        e = d.experiment
        if e is not None:
            out.append(f"  wavelength {float(e.wavelength):.6g} {length_unit}")
            det = e.detector
            if hasattr(det, "distance"):
                ps = np.asarray(det.pixel_size)
                out.append(
                    f"  flat detector: distance {float(det.distance):.6g} {length_unit}, pixel (y, x) "
                    f"{ps[0]:.6g} x {ps[1]:.6g} {length_unit}, beam centre (row, col) "
                    f"{tuple(round(float(v), 3) for v in np.asarray(det.center))}, theta_max "
                    f"{np.degrees(e.theta_max):.2f} deg"
                    + ("" if det.tilt is None else f", tilt {np.degrees(np.asarray(det.tilt))} deg")
                )
            else:
                out.append(f"  detector: {det}")
        if d.truth is not None:
            fields = ", ".join(
                f"{k} {np.shape(v)}" for k, v in d.truth["fields"].items() if isinstance(v, np.ndarray)
            )
            out.append(f"  truth: {d.truth['type']} ({fields})")
        for k, v in d.extras.items():
            if isinstance(v, np.ndarray) and v.shape == (d.n_images,) and np.issubdtype(v.dtype, np.number):
                out.append(f"  truth {k}: {v.size} values in [{v.min():.4g}, {v.max():.4g}]")
        for k in ("seed", "dataset_seed", "version_diffscat", "version_jax", "config_path"):
            if k in d.extras:
                out.append(f"  {k}: {d.extras[k]}")
        if stats:
            img = d.data if isinstance(d.data, np.ndarray) else d.data[0]
            out.append(
                f"  image 0: min {img.min():.4g}, max {img.max():.4g}, mean {img.mean():.4g}, sum {img.sum():.6g}"
            )
    return "\n".join(out)


def run(args) -> int:
    print(summarise(args.file, args.length_unit, args.tree, args.stats, args.allow_external_links))
    return 0
