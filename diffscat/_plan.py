"""Experiment planning report: what a config will show before the beamtime (`diffscat plan`).

`plan_report(config, out_path)` reads a `diffscat simulate` TOML config (or a config dict) and computes

1. delta, beta and the attenuation length of the shape's material(s) vs photon energy around the chosen
   energy, with absorption edges (`diffscat.materials`, xraydb / Chantler tables);
2. the particle's thickness along the beam through its centre and the transmission through it;
3. the expected photons per pixel vs scattering angle at the config's fluence (azimuthal average of
   `expected_photons` of a simulated pattern) and the angle beyond which it stays below one photon;
4. the q range and the real-space resolution;
5. the speckle sampling (detector pixels per fringe, at the smallest and largest angle);
6. a validity verdict for eq. 9 (MSFT) from measured MSFT-vs-Mie errors (`VALIDITY_TABLE`);
7. a 3-D sketch of the geometry (beam, particle in its orientation, detector);

and writes them as a multi-page PDF (3 pages; a PNG per page next to it unless `png=False`). Numbers are
returned as a dict (`plan_report`) and summarised by `format_summary`.

Definitions (also on the pages):
- theta_edge: the smallest scattering angle on the detector's outer pixel ring (full azimuthal coverage up to
  it); theta_corner: the largest angle of any valid pixel.
- q = 2 k0 sin(theta / 2) (the modulus of k_out - k_in), k0 = 2 pi / lambda; q_max at theta_edge and at
  theta_corner. Resolution (full period) d = 2 pi / q_max, half-period pi / q_max = lambda / (4 sin(theta/2)).
- Thickness: the chord of the particle along the beam (z) through the lab origin, where shapes sit.
- Transmission: exp(-thickness / L_att) for a one-material particle (L_att from xraydb for a named material,
  lambda / (4 pi beta) for a given beta); exp(-(4 pi / lambda) integral beta dz) through the centre for a
  multi-material particle (CoreShell, Composite).
- Fringe period in q: 2 pi / (2 R) with R the particle's bounding radius (the finest speckle); q step per
  pixel: the largest |Delta q| to a neighbouring pixel.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any

import numpy as np

__all__ = [
    "plan_report",
    "plan_numbers",
    "format_summary",
    "validity_verdict",
    "VALIDITY_TABLE",
    "DEFAULT_FLUENCE_PER_UM2",
]

#: Fluence assumed when a config has no [detector_model]: photons per um^2 (1e12 photons in a 10 um x 10 um
#: focus, a typical soft X-ray FEL pulse at the sample).
DEFAULT_FLUENCE_PER_UM2 = 1.0e10

#: Measured rel-L2 errors of the MSFT (eq. 9) against Mie theory for a sphere of radius R = 7 lambda, profile
#: 10-30 deg (unit integral), QGrid 128^2 at 30 deg, default pitch: (|n - 1|, delta, beta, error in %, source).
VALIDITY_TABLE: tuple[tuple[float, float, float, float, str], ...] = (
    (0.001, 0.0, 0.001, 0.16, "docs/accuracy.md (sphere R = 7 lambda vs Mie)"),
    (math.hypot(0.02, 0.01), -0.02, 0.01, 1.09, "docs/accuracy.md (sphere R = 7 lambda vs Mie)"),
    (0.1, 0.1, 0.0, 18.0, "team measurement, sphere R = 7 lambda vs Mie (not yet in docs/accuracy.md)"),
)
#: Rule of thumb for eq. 9 (Scatman paper, Sec. 4; docs/accuracy.md): quantitative for |delta| <~ 0.02 and
#: low beta.
RULE_OF_THUMB_DELTA = 0.02
VERDICT_GOOD = "good (< 1 %)"
VERDICT_MARGINAL = "marginal"
VERDICT_OUTSIDE = "outside validity — use a propagating model"


# ------------------------------------------------------------------------------------------------ numbers


def validity_verdict(abs_dn: float | int, delta: float | int, beta: float | int) -> dict[str, Any]:
    """Estimated MSFT model error and a verdict for a particle whose largest |n - 1| is `abs_dn`.

    The error is interpolated log-log in |n - 1| between the points of `VALIDITY_TABLE` (measured at
    R = 7 lambda), held at the first point below it and extrapolated with the last slope above it.
    Verdict: "good (< 1 %)" below 1 %, "marginal" below 5 %, else "outside validity — use a propagating
    model". `rule_of_thumb` is True when |delta| <= 0.02 and beta <= 0.02 (Scatman paper Sec. 4).
    Returns {"error_percent", "verdict", "rule_of_thumb", "table", "note"}."""
    x = np.log([r[0] for r in VALIDITY_TABLE])
    y = np.log([r[3] for r in VALIDITY_TABLE])
    a = math.log(max(float(abs_dn), 1e-12))
    if a <= x[0]:
        err = float(np.exp(y[0]))
    elif a >= x[-1]:
        slope = (y[-1] - y[-2]) / (x[-1] - x[-2])
        err = float(np.exp(y[-1] + slope * (a - x[-1])))
    else:
        err = float(np.exp(np.interp(a, x, y)))
    verdict = VERDICT_GOOD if err < 1.0 else VERDICT_MARGINAL if err < 5.0 else VERDICT_OUTSIDE
    rule = abs(delta) <= RULE_OF_THUMB_DELTA and beta <= RULE_OF_THUMB_DELTA
    return {
        "error_percent": err,
        "verdict": verdict,
        "rule_of_thumb": bool(rule),
        "table": VALIDITY_TABLE,
        "note": "MSFT vs Mie at R = 7 lambda, interpolated in |n - 1| (docs/accuracy.md and a team measurement)",
    }


def _to_unit(nm: float | np.ndarray, unit_m: float):
    return np.asarray(nm) * 1e-9 / unit_m


def _unit_label(unit: str) -> str:
    return {"um": "µm", "angstrom": "Å", "A": "Å"}.get(unit, unit)


def _column(shape, radius: float, n: int = 4001):
    """(z, occupancy, beta) along the beam axis x = y = 0 from -radius to radius (n points)."""
    import jax.numpy as jnp

    from ._grid import VoxelGrid

    z = np.linspace(-radius, radius, n)
    dz = z[1] - z[0]
    grid = VoxelGrid((1, 1, n), (dz, dz, dz))
    dn = np.asarray(shape.render(grid))[0, 0, :]
    if hasattr(shape, "occupancy"):
        pts = jnp.asarray(np.stack([0 * z, 0 * z, z], axis=-1), dtype=shape.dtype)
        occ = np.asarray(shape.occupancy(pts, 0.0), float)
    else:
        a = np.abs(dn)
        occ = (a >= 0.5 * max(a.max(), 1e-300)).astype(float)
    return z, occ, dn.imag


def _reduced_experiment(exp, max_pixels: int):
    """An experiment with binned pixels (factor b) when the detector has more than `max_pixels` pixels."""
    import diffscat as ds

    det = exp.detector
    npix = int(np.prod(exp.shape))
    b = 1
    while npix / (b * b) > max_pixels:
        b += 1
    if b == 1:
        return exp, 1
    if isinstance(det, ds.QGrid | ds.AngleGrid):
        return ds.Experiment(exp.wavelength, type(det)(max(det.n // b, 2), det.theta_max_deg)), b
    if isinstance(det, ds.FlatDetector):
        ny, nx = det.shape
        c = (np.asarray(det.center) + 0.5) / b - 0.5
        new = ds.FlatDetector(det.distance, det.pixel_size * b, (ny // b, nx // b), c, det.tilt)
        return ds.Experiment(exp.wavelength, new), b
    return exp, 1


def _radial_profile(theta, values, valid, nbins: int):
    """Mean of `values` over valid pixels in `nbins` equal theta bins: (theta of each non-empty bin (mean
    theta of its pixels), mean value, pixel count)."""
    th, v = theta[valid], values[valid]
    edges = np.linspace(0.0, th.max() * (1 + 1e-9), nbins + 1)
    idx = np.clip(np.digitize(th, edges) - 1, 0, nbins - 1)
    cnt = np.bincount(idx, minlength=nbins)
    s = np.bincount(idx, weights=v, minlength=nbins)
    st = np.bincount(idx, weights=th, minlength=nbins)
    keep = cnt > 0
    return st[keep] / cnt[keep], s[keep] / cnt[keep], cnt[keep]


def one_photon_angle(theta, photons) -> tuple[float | None, str]:
    """The angle beyond which the profile `photons(theta)` (sorted by theta) stays below 1 photon per pixel:
    log-linear interpolation between the last bin >= 1 and the next. Returns (angle or None, status) with
    status "crossing", "above" (>= 1 up to the last bin) or "below" (< 1 everywhere)."""
    theta, photons = np.asarray(theta, float), np.asarray(photons, float)
    above = np.nonzero(photons >= 1.0)[0]
    if above.size == 0:
        return None, "below"
    i = int(above[-1])
    if i == len(theta) - 1:
        return None, "above"
    p0, p1 = photons[i], max(photons[i + 1], 1e-300)
    f = math.log(p0) / (math.log(p0) - math.log(p1))
    return float(theta[i] + f * (theta[i + 1] - theta[i])), "crossing"


def _q_step(q, valid):
    """Largest |Delta q| from each pixel to its right and lower neighbours, shape (ny-1, nx-1)."""
    dr = np.linalg.norm(q[1:, :-1] - q[:-1, :-1], axis=-1)
    dc = np.linalg.norm(q[:-1, 1:] - q[:-1, :-1], axis=-1)
    ok = valid[1:, :-1] & valid[:-1, 1:] & valid[:-1, :-1]
    return np.maximum(dr, dc), ok


def plan_numbers(cfg: dict, *, max_pixels: int = 128 * 128) -> dict[str, Any]:
    """Compute every number of the planning report for a validated config dict (lengths in the config's
    `experiment.length_unit`, angles in degrees, energies in eV). The detector is binned for the simulation
    when it has more than `max_pixels` pixels (photons per pixel are then per original pixel, divided by
    the bin area). Keys are listed in docs/cli.md (`diffscat plan`)."""
    import jax

    import diffscat as ds
    from diffscat.detectors import expected_photons
    from diffscat.io import (
        build_detector_model,
        build_experiment,
        build_shape,
        config_photon_energy_eV,
        material_records,
    )
    from diffscat.io._units import length_unit_m

    from .materials import attenuation_length, edges_near, energy_range, get_material

    unit = cfg["experiment"]["length_unit"]
    unit_m = length_unit_m(unit)
    energy = config_photon_energy_eV(cfg)
    exp = build_experiment(cfg)
    lam = float(exp.wavelength)
    k0 = 2 * math.pi / lam
    shape = build_shape(cfg["shape"], energy)
    records = material_records(cfg)
    R = float(np.asarray(shape.bounding_radius()))
    out: dict[str, Any] = {
        "length_unit": unit,
        "photon_energy_eV": energy,
        "wavelength": lam,
        "shape_type": type(shape).__name__,
        "bounding_radius": R,
        "size_in_wavelengths": R / lam,
        "materials": records,
    }

    # 1. delta, beta, attenuation length vs photon energy
    curves = []
    for rec in records:
        m = get_material(rec["name"], rec["density"])
        lo, hi = energy_range(m)
        e = np.geomspace(max(energy / 3, lo * 1.001), min(energy * 3, hi * 0.999), 400)
        d, b = m.delta_beta(e)
        att = _to_unit(m.attenuation_length(e), unit_m)
        edges = [x for x in edges_near(m, energy, window_eV=3 * energy) if e[0] <= x[2] <= e[-1]]
        curves.append(
            {"record": rec, "energy_eV": e, "delta": d, "beta": b, "attenuation": att, "edges": edges}
        )
    out["material_curves"] = curves

    # 2. thickness and transmission
    z, occ, beta_z = _column(shape, R * 1.02)
    dz = z[1] - z[0]
    thickness = float(occ.sum() * dz)
    single = hasattr(shape, "delta") and hasattr(shape, "beta")
    if single:
        beta0 = float(np.asarray(shape.beta))
        if records:
            rec = records[0]
            att = float(_to_unit(attenuation_length(rec["name"], energy, rec["density"]), unit_m))
            att_src = "xraydb (photoabsorption + scattering)"
        else:
            att = lam / (4 * math.pi * beta0) if beta0 > 0 else math.inf
            att_src = "lambda / (4 pi beta)"
        transmission = math.exp(-thickness / att) if math.isfinite(att) else 1.0
    else:
        ib = float(np.sum(np.clip(beta_z, 0, None)) * dz)
        att = thickness / ((4 * math.pi / lam) * ib) if ib > 0 else math.inf
        att_src = "effective, (4 pi / lambda) integral beta dz through the centre"
        transmission = math.exp(-(4 * math.pi / lam) * ib)
    out.update(
        thickness=thickness, attenuation_length=att, attenuation_source=att_src, transmission=transmission
    )

    # 3. photons per pixel vs angle
    model, _ = build_detector_model(cfg, exp)
    if model is None:
        fluence = DEFAULT_FLUENCE_PER_UM2 * (unit_m / 1e-6) ** 2
        pol, eff, fluence_src = (
            "none",
            np.asarray(1.0),
            f"default {DEFAULT_FLUENCE_PER_UM2:.0e} photons/µm² (no [detector_model])",
        )
    else:
        fluence = float(model.fluence)
        pol, eff = model.polarisation, np.asarray(model.efficiency)
        fluence_src = "[detector_model]"
    sim_exp, b = _reduced_experiment(exp, max_pixels)
    sim = cfg.get("simulation", {})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        I = ds.simulate(
            shape,
            sim_exp,
            method=sim.get("method", "msft"),
            pitch=sim.get("pitch"),
            transform=sim.get("transform", "auto"),
        )
        I = jax.block_until_ready(I)
    if eff.ndim and b > 1:
        eff = float(eff.mean())
    photons = np.asarray(expected_photons(I, sim_exp, fluence, pol, eff)) / (b * b)
    pix = sim_exp.pixels()
    theta_s, valid_s = np.asarray(pix.theta), np.asarray(pix.valid)
    nb = int(np.clip(min(sim_exp.shape) // 2, 16, 200))
    th_p, ph_p, _ = _radial_profile(theta_s, photons, valid_s, nb)
    th1, status = one_photon_angle(th_p, ph_p)
    out.update(
        fluence=fluence,
        fluence_source=fluence_src,
        polarisation=pol,
        efficiency=float(np.mean(eff)),
        simulated_shape=tuple(sim_exp.shape),
        binning=b,
        pattern_photons=photons,
        pattern_experiment=sim_exp,
        profile_theta_deg=np.degrees(th_p),
        profile_photons=ph_p,
        one_photon_theta_deg=None if th1 is None else math.degrees(th1),
        one_photon_status=status,
        total_photons=float(photons.sum() * b * b),
        warnings=[str(w.message) for w in caught],
    )

    # 4. q range and resolution (the full detector)
    pix = exp.pixels()
    theta, valid = np.asarray(pix.theta), np.asarray(pix.valid)
    border = np.zeros(theta.shape, bool)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    t_edge = float(theta[border & valid].min())
    t_corner = float(theta[valid].max())
    qmax_edge = 2 * k0 * math.sin(t_edge / 2)
    qmax_corner = 2 * k0 * math.sin(t_corner / 2)
    out.update(
        theta_edge_deg=math.degrees(t_edge),
        theta_corner_deg=math.degrees(t_corner),
        q_max_edge=qmax_edge,
        q_max_corner=qmax_corner,
        resolution_edge=2 * math.pi / qmax_edge,
        resolution_corner=2 * math.pi / qmax_corner,
        half_period_edge=math.pi / qmax_edge,
        half_period_corner=math.pi / qmax_corner,
    )

    # 5. speckle sampling
    q = np.asarray(pix.q(k0))
    dq, ok = _q_step(q, valid)
    th_c = theta[:-1, :-1]
    fringe = 2 * math.pi / (2 * R)
    i_small = np.unravel_index(np.argmin(np.where(ok, th_c, np.inf)), th_c.shape)
    i_large = np.unravel_index(np.argmax(np.where(ok, th_c, -np.inf)), th_c.shape)
    th_q, dq_q, _ = _radial_profile(th_c, dq, ok, nb)
    out.update(
        fringe_period_q=fringe,
        q_step_small=float(dq[i_small]),
        q_step_large=float(dq[i_large]),
        pixels_per_fringe_small=float(fringe / dq[i_small]),
        pixels_per_fringe_large=float(fringe / dq[i_large]),
        sampling_theta_deg=np.degrees(th_q),
        sampling_pixels_per_fringe=fringe / dq_q,
    )
    out["undersampled"] = out["pixels_per_fringe_large"] < 2 or out["pixels_per_fringe_small"] < 2

    # 6. validity of eq. 9
    m = shape.max_abs_dn()
    abs_dn = float(np.max(np.asarray(m))) if m is not None else float("nan")
    deltas, betas = _indices(shape)
    dmax = max((abs(x) for x in deltas), default=float("nan"))
    bmax = max(betas, default=float("nan"))
    v = validity_verdict(abs_dn, dmax, bmax)
    out.update(abs_dn=abs_dn, delta_max=dmax, beta_max=bmax, validity=v)
    out["shape"], out["experiment"] = shape, exp
    return out


def _indices(shape) -> tuple[list[float], list[float]]:
    """(deltas, betas) of every solid in a shape (parts of composites included)."""
    if hasattr(shape, "delta") and hasattr(shape, "beta"):
        return [float(np.asarray(shape.delta))], [float(np.asarray(shape.beta))]
    ds_, bs = [], []
    for name in ("core", "shell"):
        if hasattr(shape, name):
            d, b = _indices(getattr(shape, name))
            ds_ += d
            bs += b
    for p in getattr(shape, "parts", ()) or ():
        d, b = _indices(p)
        ds_ += d
        bs += b
    if not ds_ and hasattr(shape, "dn"):
        dn = np.asarray(shape.dn)
        ds_, bs = [float(np.max(np.abs(dn.real)))], [float(np.max(dn.imag))]
    return ds_, bs


def format_summary(r: dict[str, Any]) -> str:
    """A short text summary of `plan_numbers` (what `diffscat plan` prints)."""
    u = r["length_unit"]
    lines = [
        f"photon energy {r['photon_energy_eV']:.4g} eV, wavelength {r['wavelength']:.4g} {u}",
        f"particle {r['shape_type']}, bounding radius {r['bounding_radius']:.4g} {u} "
        f"({r['size_in_wavelengths']:.3g} wavelengths)",
    ]
    for rec in r["materials"]:
        lines.append(
            f"material {rec['path']}: {rec['name']} ({rec['formula']}, {rec['density']:.4g} g/cm^3): "
            f"delta {rec['delta']:.3e}, beta {rec['beta']:.3e}"
        )
    if not r["materials"]:
        lines.append(f"no material named: delta {r['delta_max']:.3e}, beta {r['beta_max']:.3e} as given")
    lines += [
        f"thickness along the beam {r['thickness']:.4g} {u}, attenuation length {r['attenuation_length']:.4g} "
        f"{u} -> transmission {r['transmission']:.3f}",
        f"fluence {r['fluence']:.3g} photons/{u}^2 ({r['fluence_source']}); "
        f"{r['total_photons']:.3g} photons on the detector",
        "one photon per pixel: "
        + (
            f"at theta = {r['one_photon_theta_deg']:.3g} deg"
            if r["one_photon_status"] == "crossing"
            else ">= 1 up to the detector edge"
            if r["one_photon_status"] == "above"
            else "< 1 everywhere"
        ),
        f"theta edge {r['theta_edge_deg']:.3g} deg, corner {r['theta_corner_deg']:.3g} deg; q_max "
        f"{r['q_max_edge']:.4g} / {r['q_max_corner']:.4g} {u}^-1",
        f"resolution 2 pi/q_max {r['resolution_edge']:.4g} {u} (edge), {r['resolution_corner']:.4g} {u} "
        f"(corner); half-period {r['half_period_edge']:.4g} / {r['half_period_corner']:.4g} {u}",
        f"speckle: {r['pixels_per_fringe_small']:.3g} pixels per fringe at small angle, "
        f"{r['pixels_per_fringe_large']:.3g} at the largest"
        + ("  WARNING: undersampled (< 2)" if r["undersampled"] else ""),
        f"eq. 9 validity: {r['validity']['verdict']} (estimated {r['validity']['error_percent']:.2g} % at "
        f"|n-1| = {r['abs_dn']:.3g}; rule of thumb |delta| <= 0.02, low beta: "
        f"{'met' if r['validity']['rule_of_thumb'] else 'NOT met'})",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ figures


def _page_materials(plt, r):
    u = _unit_label(r["length_unit"])
    E = r["photon_energy_eV"]
    fig = plt.figure(figsize=(11.0, 8.0), dpi=100, layout="constrained")
    fig.suptitle(f"diffscat plan: materials and transmission at {E:.4g} eV (λ = {r['wavelength']:.4g} {u})")
    gs = fig.add_gridspec(2, 2)
    ax_txt = fig.add_subplot(gs[0, 0])
    ax_txt.axis("off")
    ax_txt.set_title("summary", loc="left")
    ax_txt.text(
        0.0,
        1.0,
        _wrap(format_summary(r), 72),
        va="top",
        ha="left",
        family="monospace",
        fontsize=7.2,
        transform=ax_txt.transAxes,
    )
    ax_db = fig.add_subplot(gs[0, 1])
    ax_att = fig.add_subplot(gs[1, 0])
    ax_tr = fig.add_subplot(gs[1, 1])
    if r["material_curves"]:
        for k, c in enumerate(r["material_curves"]):
            name = c["record"]["name"]
            col = f"C{2 * k}"
            ax_db.loglog(c["energy_eV"], np.abs(c["delta"]), color=col, label=f"|δ| {name}")
            ax_db.loglog(c["energy_eV"], c["beta"], color=col, ls="--", label=f"β {name}")
            ax_att.loglog(c["energy_eV"], c["attenuation"], color=col, label=name)
            for el, edge, ee in c["edges"]:
                for ax in (ax_db, ax_att):
                    ax.axvline(ee, color="0.6", lw=0.8, ls=":")
                ax_db.text(
                    ee,
                    1.0,
                    f" {el} {edge}",
                    rotation=90,
                    va="top",
                    ha="left",
                    fontsize=7,
                    color="0.4",
                    transform=ax_db.get_xaxis_transform(),
                )
        for ax in (ax_db, ax_att):
            ax.axvline(E, color="k", lw=1.0)
            ax.set_xlabel("photon energy [eV]")
        ax_db.plot([E], [abs(r["materials"][0]["delta"])], "ko", ms=4)
        ax_db.plot([E], [r["materials"][0]["beta"]], "ks", ms=4)
        ref = [abs(r["materials"][0]["delta"]), r["materials"][0]["beta"]]
        ref = [x for x in ref if x > 0] or [1e-6]
        ax_db.set_ylim(
            min(ref) * 1e-2,
            max(max(np.max(np.abs(c["delta"])), np.max(c["beta"])) for c in r["material_curves"]) * 3,
        )
        ax_db.set_ylabel("δ, β")
        ax_db.set_title(f"δ and β (xraydb, Chantler); edges dotted; chosen {E:.4g} eV solid", fontsize=9)
        ax_db.legend(fontsize=7, loc="lower left")
        ax_att.set_ylabel(f"1/e attenuation length [{u}]")
        ax_att.axhline(
            r["thickness"], color="C1", lw=0.8, ls="--", label=f"particle thickness {r['thickness']:.3g} {u}"
        )
        ax_att.set_title("attenuation length (photoabsorption + scattering)", fontsize=9)
        ax_att.legend(fontsize=7)
    else:
        ax_db.plot([E], [abs(r["delta_max"])], "ko", label="|δ| (given)")
        ax_db.plot([E], [r["beta_max"]], "ks", label="β (given)")
        ax_db.set_yscale("log")
        ax_db.set_xlabel("photon energy [eV]")
        ax_db.set_title("δ, β given in the config (no material named: no energy dependence)", fontsize=9)
        ax_db.legend(fontsize=7)
        ax_att.axis("off")
        ax_att.text(
            0.5,
            0.5,
            "no material named in [shape]:\nattenuation length λ / (4π β) from the given β\n"
            f"= {r['attenuation_length']:.4g} {u}",
            ha="center",
            va="center",
            transform=ax_att.transAxes,
        )
    t = r["thickness"]
    L = r["attenuation_length"]
    tt = np.linspace(0, max(3 * t, 1e-30), 200)
    T = np.exp(-tt / L) if math.isfinite(L) else np.ones_like(tt)
    ax_tr.plot(tt, T, "C0")
    ax_tr.plot([t], [r["transmission"]], "ko")
    ax_tr.annotate(
        f"T = {r['transmission']:.3f}\nat {t:.3g} {u}",
        (t, r["transmission"]),
        textcoords="offset points",
        xytext=(8, 8),
        fontsize=8,
    )
    ax_tr.set_xlabel(f"thickness along the beam [{u}]")
    ax_tr.set_ylabel("intensity transmission")
    ax_tr.set_ylim(0, 1.05)
    ax_tr.set_title(f"transmission exp(−t / L), L = {L:.3g} {u} at {E:.4g} eV", fontsize=9)
    return fig


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.fill(line, width, subsequent_indent="  ") for line in text.splitlines())


def _page_signal(plt, r):
    from matplotlib.colors import LogNorm

    u = _unit_label(r["length_unit"])
    lam = r["wavelength"]
    k0 = 2 * math.pi / lam
    fig = plt.figure(figsize=(11.0, 8.0), dpi=100, layout="constrained")
    fig.suptitle(
        f"diffscat plan: signal, sampling and validity ({r['shape_type']}, R = "
        f"{r['bounding_radius']:.3g} {u}, λ = {lam:.4g} {u})"
    )
    gs = fig.add_gridspec(2, 2)
    q_of = (
        lambda t: 2 * k0 * np.sin(np.radians(t) / 2),
        lambda q: np.degrees(2 * np.arcsin(np.clip(q / (2 * k0), 0, 1))),
    )

    ax = fig.add_subplot(gs[0, 0])
    th, ph = r["profile_theta_deg"], r["profile_photons"]
    ax.semilogy(th, np.maximum(ph, 1e-12), "C0")
    ax.axhline(1.0, color="C3", lw=0.8, ls="--")
    if r["one_photon_theta_deg"] is not None:
        ax.axvline(r["one_photon_theta_deg"], color="C3", lw=0.8)
        ax.text(
            r["one_photon_theta_deg"],
            0.98,
            f" 1 photon/pixel at {r['one_photon_theta_deg']:.3g}°",
            color="C3",
            fontsize=8,
            va="top",
            transform=ax.get_xaxis_transform(),
        )
    ax.set_ylim(max(np.min(ph[ph > 0]) if np.any(ph > 0) else 1e-6, 1e-6 * ph.max()) / 2, ph.max() * 3)
    ax.set_xlim(0, th.max() * 1.02)
    ax.set_xlabel("scattering angle θ [deg]")
    ax.set_ylabel("expected photons per pixel (azimuthal mean)")
    sec = ax.secondary_xaxis("top", functions=q_of)
    sec.set_xlabel(f"q [{u}$^{{-1}}$]")
    ax.set_title(
        f"fluence {r['fluence']:.3g} photons/{u}² ({r['fluence_source']}), pol. {r['polarisation']}, "
        f"QE {r['efficiency']:.2g}",
        fontsize=8,
    )

    ax = fig.add_subplot(gs[0, 1])
    img = r["pattern_photons"]
    pos = img[img > 0]
    vmin = max(pos.min() if pos.size else 1e-6, img.max() * 1e-6)
    im = ax.imshow(
        np.maximum(img, vmin), origin="lower", norm=LogNorm(vmin=vmin, vmax=img.max()), cmap="magma"
    )
    fig.colorbar(im, ax=ax, shrink=0.85, label="expected photons per pixel")
    ax.set_xlabel("column")
    ax.set_ylabel("row")
    sh = r["simulated_shape"]
    ax.set_title(
        f"expected photons, {sh[0]}×{sh[1]} pixels"
        + (f" (binned {r['binning']}×, per original pixel)" if r["binning"] > 1 else ""),
        fontsize=9,
    )

    ax = fig.add_subplot(gs[1, 0])
    ax.plot(r["sampling_theta_deg"], r["sampling_pixels_per_fringe"], "C2")
    ax.axhline(2.0, color="C3", ls="--", lw=0.8)
    ax.text(
        0.01,
        2.0,
        " 2 pixels per fringe (Nyquist)",
        color="C3",
        fontsize=8,
        va="bottom",
        transform=ax.get_yaxis_transform(),
    )
    ax.set_ylim(0, max(3.0, 1.15 * np.max(r["sampling_pixels_per_fringe"])))
    ax.set_xlim(0, np.max(r["sampling_theta_deg"]) * 1.02)
    ax.set_xlabel("scattering angle θ [deg]")
    ax.set_ylabel("detector pixels per speckle fringe")
    sec = ax.secondary_xaxis("top", functions=q_of)
    sec.set_xlabel(f"q [{u}$^{{-1}}$]")
    warn = "  UNDERSAMPLED" if r["undersampled"] else ""
    ax.set_title(
        f"fringe Δq = 2π/(2R) = {r['fringe_period_q']:.3g} {u}$^{{-1}}$: "
        f"{r['pixels_per_fringe_small']:.3g} px (small θ), {r['pixels_per_fringe_large']:.3g} px "
        f"(θ = {r['theta_corner_deg']:.3g}°){warn}",
        fontsize=8,
        color="C3" if warn else "k",
    )
    ax.text(
        0.98,
        0.5,
        f"q_max {r['q_max_edge']:.3g} {u}⁻¹ (edge, θ = {r['theta_edge_deg']:.3g}°), "
        f"{r['q_max_corner']:.3g} (corner)\n"
        f"resolution 2π/q_max: {r['resolution_edge']:.3g} {u} (edge), {r['resolution_corner']:.3g} {u}\n"
        f"half-period π/q_max: {r['half_period_edge']:.3g} {u}, {r['half_period_corner']:.3g} {u}",
        transform=ax.transAxes,
        ha="right",
        va="center",
        fontsize=7.5,
        bbox={"facecolor": "white", "edgecolor": "0.7", "alpha": 0.9},
    )

    ax = fig.add_subplot(gs[1, 1])
    v = r["validity"]
    tx = np.array([t[0] for t in VALIDITY_TABLE])
    ty = np.array([t[3] for t in VALIDITY_TABLE])
    xs = np.geomspace(3e-4, 0.3, 100)
    ax.loglog(
        xs, [validity_verdict(x, 0, 0)["error_percent"] for x in xs], "0.6", lw=0.8, label="interpolation"
    )
    ax.loglog(tx, ty, "C0o", label="measured, sphere R = 7 λ vs Mie")
    for x, y, t in zip(tx, ty, VALIDITY_TABLE, strict=True):
        ax.annotate(
            f"δ={t[1]:g}, β={t[2]:g}: {t[3]:g} %",
            (x, y),
            textcoords="offset points",
            xytext=(5, -10),
            fontsize=7,
        )
    if math.isfinite(r["abs_dn"]):
        ax.loglog([r["abs_dn"]], [v["error_percent"]], "r*", ms=12, label="this config")
    ax.axhspan(1e-2, 1.0, color="C2", alpha=0.08)
    ax.axhspan(1.0, 5.0, color="C1", alpha=0.08)
    ax.axhspan(5.0, 1e3, color="C3", alpha=0.08)
    ax.set_ylim(0.05, 200)
    ax.set_xlabel("largest |n − 1| = |δ − iβ|")
    ax.set_ylabel("MSFT error vs Mie, rel-L2 [%]")
    ax.legend(fontsize=7, loc="upper left")
    rule = "met" if v["rule_of_thumb"] else "NOT met"
    ax.set_title(
        f"eq. 9: {v['verdict']} (~{v['error_percent']:.2g} %); |δ|max {r['delta_max']:.3g}, "
        f"βmax {r['beta_max']:.3g}, R = {r['size_in_wavelengths']:.3g} λ\nrule |δ| ≲ 0.02, low β: {rule}. "
        "Source: docs/accuracy.md + team (δ = 0.1)",
        fontsize=8,
    )
    return fig


def _surface_points(shape, R: float, n: int = 30):
    import jax.numpy as jnp

    g = np.linspace(-R, R, n)
    X, Y, Z = np.meshgrid(g, g, g, indexing="ij")
    pts = np.stack([X, Y, Z], -1)
    if hasattr(shape, "occupancy"):
        occ = np.asarray(shape.occupancy(jnp.asarray(pts, dtype=shape.dtype), 0.0)) >= 0.5
    else:
        from ._grid import VoxelGrid

        a = np.abs(np.asarray(shape.render(VoxelGrid((n, n, n), g[1] - g[0]))))
        occ = a >= 0.5 * a.max()
    inner = occ.copy()
    for ax in range(3):
        for s in (1, -1):
            inner &= np.roll(occ, s, axis=ax)
    surf = occ & ~inner
    return pts[surf]


def _page_geometry(plt, r):
    import diffscat as ds

    u = _unit_label(r["length_unit"])
    exp, shape, R = r["experiment"], r["shape"], r["bounding_radius"]
    det = exp.detector
    fig = plt.figure(figsize=(11.0, 6.0), dpi=100, layout="constrained")
    fig.suptitle("diffscat plan: geometry (lab frame, beam along +z)")
    ax = fig.add_subplot(1, 2, 1, projection="3d")
    if isinstance(det, ds.FlatDetector):
        P = np.asarray(det.pixel_positions())
        D = float(np.asarray(det.distance))
        corners = np.array([P[0, 0], P[0, -1], P[-1, -1], P[-1, 0], P[0, 0]])
        ax.plot(corners[:, 2], corners[:, 0], corners[:, 1], "C0")
        from mpl_toolkits.mplot3d.art3d import Poly3DCollection

        ax.add_collection3d(Poly3DCollection([corners[:4][:, [2, 0, 1]]], alpha=0.2, facecolor="C0"))
        for c in corners[:4]:
            ax.plot([0, c[2]], [0, c[0]], [0, c[1]], color="0.5", lw=0.6)
        zlen = D
        title = (
            f"flat detector {det.shape[0]}×{det.shape[1]} px at D = {D:.4g} {u} (true scale); "
            f"θ edge {r['theta_edge_deg']:.3g}°, corner {r['theta_corner_deg']:.3g}°"
        )
        ax.scatter([0], [0], [0], color="C1", s=20, label="particle")
    else:
        zlen = 3 * R
        t = math.radians(r["theta_edge_deg"])
        ph = np.linspace(0, 2 * math.pi, 73)
        rim = np.stack(
            [zlen * math.cos(t) + 0 * ph, zlen * math.sin(t) * np.cos(ph), zlen * math.sin(t) * np.sin(ph)]
        )
        ax.plot(rim[0], rim[1], rim[2], "C0")
        for k in range(0, 72, 9):
            ax.plot([0, rim[0, k]], [0, rim[1, k]], [0, rim[2, k]], color="0.5", lw=0.6)
        pts = _surface_points(shape, R * 1.02, 24)
        if len(pts):
            ax.scatter(pts[:, 2], pts[:, 0], pts[:, 1], c=pts[:, 2], cmap="viridis", s=2)
        title = (
            f"{type(det).__name__} {det.n}×{det.n}: θmax cone {det.theta_max_deg:g}° "
            f"(drawn to 3 R; directions only)"
        )
    ax.quiver(-0.3 * zlen, 0, 0, 1.4 * zlen, 0, 0, color="C3", arrow_length_ratio=0.08, lw=1.5)
    ax.text(1.1 * zlen, 0, 0, "beam", color="C3")
    ax.set_xlabel(f"z (beam) [{u}]")
    ax.set_ylabel(f"x [{u}]")
    ax.set_zlabel(f"y [{u}]")
    ax.set_title(title, fontsize=8)
    ax.set_box_aspect(None, zoom=0.85)

    ax = fig.add_subplot(1, 2, 2, projection="3d")
    pts = _surface_points(shape, R * 1.02, 30)
    if len(pts):
        ax.scatter(pts[:, 2], pts[:, 0], pts[:, 1], c=pts[:, 2], cmap="viridis", s=3)
    ax.quiver(-1.6 * R, 0, 0, 3.2 * R, 0, 0, color="C3", arrow_length_ratio=0.1, lw=1.5)
    ax.text(1.7 * R, 0, 0, "beam", color="C3")
    for a in ("x", "y", "z"):
        getattr(ax, f"set_{a}lim")(-1.6 * R, 1.6 * R)
    ax.set_box_aspect((1, 1, 1), zoom=0.85)
    ax.set_xlabel(f"z (beam) [{u}]")
    ax.set_ylabel(f"x [{u}]")
    ax.set_zlabel(f"y [{u}]")
    rot = r.get("euler_deg")
    ax.set_title(
        f"{r['shape_type']} in its orientation (surface points, colour = z); R = {R:.3g} {u}, "
        f"thickness {r['thickness']:.3g} {u}" + (f", Euler {rot}°" if rot else ""),
        fontsize=8,
    )
    return fig


# ------------------------------------------------------------------------------------------------ report


def plan_report(
    config: str | os.PathLike | dict,
    out_path: str | os.PathLike,
    *,
    overrides=(),
    png: bool = True,
    max_pixels: int = 128 * 128,
) -> dict[str, Any]:
    """Write the planning report of a config as a 3-page PDF and return its numbers.

    **Arguments:**
    - `config`: path of a `diffscat simulate` TOML config, or a config dict (validated here).
    - `out_path`: the PDF to write (atomically: temporary file + rename). It may not be the config file.
    - `overrides`: `--set` style "key=value" strings applied to a config read from a path.
    - `png`: also write `<out stem>-p1.png`, `-p2.png`, `-p3.png` (one per page, 100 dpi).
    - `max_pixels`: detectors with more pixels are binned for the simulation of the photon profile.

    **Returns:** the dict of `plan_numbers` (lengths in the config's length unit, angles in degrees) plus
    "pdf" (path), "pngs" (paths) and "pages" (3).

    **Raises:** `ValueError` when `out_path` is the config file; `ConfigError` / `FileNotFoundError` for
    the config.
    """
    from ._figures import _plt
    from .io import load_config, parse_config

    out_path = os.fspath(out_path)
    if isinstance(config, dict):
        cfg = parse_config(config)
    else:
        config = os.fspath(config)
        if os.path.exists(out_path) and os.path.samefile(config, out_path):
            raise ValueError(f"out_path {out_path!r} is the config file: refusing to overwrite it")
        cfg = load_config(config, overrides)
    if not out_path.lower().endswith(".pdf"):
        raise ValueError(f"out_path must be a .pdf file, got {out_path!r}")
    r = plan_numbers(cfg, max_pixels=max_pixels)
    r["euler_deg"] = cfg["shape"].get("euler_deg")
    plt = _plt()
    from matplotlib.backends.backend_pdf import PdfPages

    figs = [_page_materials(plt, r), _page_signal(plt, r), _page_geometry(plt, r)]
    pngs = []
    try:
        from ._files import atomic_output

        with atomic_output(out_path, suffix=".pdf") as tmp, PdfPages(tmp) as pdf:
            for f in figs:
                pdf.savefig(f)
        if png:
            from ._figures import save_figure

            stem = os.path.splitext(out_path)[0]
            for k, f in enumerate(figs, 1):
                pngs.append(save_figure(f, f"{stem}-p{k}.png"))
    finally:
        for f in figs:
            plt.close(f)
    r.update(pdf=out_path, pngs=pngs, pages=len(figs))
    return r
