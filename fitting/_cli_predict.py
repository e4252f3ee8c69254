"""`diffscat predict --model model.eqx --data FILE.cxi -o predictions.h5`: network predictions for every
image of a CXI file (photon counts; geometry from the file).

Writes (atomically) an HDF5 file with one row per image: radius_eq [length unit], size_wavelengths,
class (names), class_index, class_probs (N, n_classes; attribute `classes`), semi_axes (N, 3) [length unit,
sorted], rotation (N, 3, 3) (r_lab = R r_body); for a model with a harmonic head also coefficients
(N, (lmax + 1)^2) [length unit; c_lm at l^2 + l + m, lab frame, meaningful where the class is
SphericalHarmonics] with attribute `lmax`, and sh_relative (N, (lmax + 1)^2 - 1) = c_lm / c_00 (l >= 1).
Attributes: model, data, length_unit.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model file written by `diffscat train`")
    p.add_argument("--data", required=True, help="CXI file of photon counts (one image or a stack)")
    p.add_argument("-o", "--output", required=True, help="predictions file (HDF5)")
    p.add_argument("--length-unit", default="nm", help="unit of the lengths written (default nm)")
    p.add_argument("--entry", type=int, default=None, help="CXI entry (default 1)")
    p.add_argument("--batch", type=int, default=64, help="images per network call (default 64)")


def run(args) -> int:
    import h5py

    from diffscat.io import read_cxi

    from ._network import load_network
    from ._train import _atomic

    net = load_network(args.model)
    cx = read_cxi(args.data, length_unit=args.length_unit, entry=args.entry)
    if cx.experiment is None:
        raise ValueError(f"{args.data} has no detector geometry")
    n = cx.n_images
    rows = []
    for s in range(0, n, max(1, int(args.batch))):
        e = min(n, s + int(args.batch))
        if n == 1:
            d = np.asarray(cx.data, np.float32)[None]
            m = None if cx.mask is None else np.asarray(cx.mask, bool)[None]
        else:
            d = np.stack([np.asarray(cx.data[i], np.float32) for i in range(s, e)])
            m = None
            if hasattr(cx.data, "masks_for"):
                ms = [cx.data.masks_for(i) for i in range(s, e)]
                if all(x is not None for x in ms):
                    m = np.stack(ms)
            if m is None and cx.mask is not None:
                mk = np.asarray(cx.mask, bool)
                m = np.broadcast_to(mk if mk.ndim == 2 else mk[s:e], d.shape)
        rows += net.predict_batch(d, cx.experiment, m)

    def write(p):
        with h5py.File(p, "w") as f:
            f.create_dataset("radius_eq", data=np.array([r["radius_eq"] for r in rows]))
            f.create_dataset("size_wavelengths", data=np.array([r["size_wavelengths"] for r in rows]))
            f.create_dataset("class", data=np.array([r["class"] for r in rows], dtype="S"))
            f.create_dataset("class_index", data=np.array([net.classes.index(r["class"]) for r in rows]))
            cp = f.create_dataset(
                "class_probs", data=np.array([[r["class_probs"][c] for c in net.classes] for r in rows])
            )
            cp.attrs["classes"] = list(net.classes)
            f.create_dataset("semi_axes", data=np.array([r["semi_axes"] for r in rows]))
            f.create_dataset("rotation", data=np.array([r["rotation"] for r in rows]))
            if rows and "coefficients" in rows[0]:
                c = f.create_dataset("coefficients", data=np.array([r["coefficients"] for r in rows]))
                c.attrs["lmax"] = int(np.sqrt(c.shape[1])) - 1
                c.attrs["index"] = (
                    "c_lm at l^2 + l + m (lab frame; meaningful where class is SphericalHarmonics)"
                )
                f.create_dataset("sh_relative", data=np.array([r["sh_relative"] for r in rows]))
            f.attrs["model"] = os.path.abspath(args.model)
            f.attrs["data"] = os.path.abspath(args.data)
            f.attrs["length_unit"] = args.length_unit

    _atomic(args.output, write)
    print(f"wrote {args.output} ({n} predictions)")
    return 0
