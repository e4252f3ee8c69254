"""Every figure type renders, is non-empty, carries its labels with units and titles, and shows masked pixels in
the one documented colour (grey) and zero counts in the under colour (black). Each test saves a PNG and
checks it is not blank. (The CLIs' figures: tests/test_fit_configs.py.)"""

from __future__ import annotations

import math

import h5py
import matplotlib.colors as mcolors
import matplotlib.image
import matplotlib.pyplot as plt
import matplotlib.text
import numpy as np
import pytest

import diffscat as ds
from diffscat.plot import MASKED_COLOUR, UNDER_COLOUR, plot_pattern


def texts(fig) -> list[str]:
    """Every non-empty string of the figure's Text artists (titles, axis and colour-bar labels, legends)."""
    return [t.get_text() for t in fig.findobj(matplotlib.text.Text) if t.get_text()]


def has(fig, *needles) -> None:
    all_text = "\n".join(texts(fig))
    for n in needles:
        assert n in all_text, (n, texts(fig))


def rgba_at(ax, iy, ix):
    """The colour an axes' first image shows at pixel [iy, ix]."""
    im = ax.images[0]
    return np.asarray(im.to_rgba(im.get_array())[iy, ix], float)


def assert_colour(rgba, name):
    np.testing.assert_allclose(rgba, mcolors.to_rgba(name), atol=1e-6)


def check_png(path, min_size=(200, 200)):
    img = matplotlib.image.imread(path)
    assert img.shape[0] >= min_size[0] and img.shape[1] >= min_size[1]
    assert np.ptp(img[..., :3]) > 0.2  # not blank


def _pattern(exp):
    """A positive test image with a zero pixel [0, 0] and a masked block (mask False) in the middle."""
    th = np.asarray(exp.theta)
    img = 1e3 * np.exp(-((th / th.max()) ** 2) * 4.0) + 1.0
    img[0, 0] = 0.0
    mask = np.ones(img.shape, bool)
    ny, nx = img.shape
    mask[ny // 2 - 2 : ny // 2 + 2, nx // 2 - 2 : nx // 2 + 2] = False
    return img, mask


@pytest.mark.parametrize(
    "det, xlabel, ylabel, half",
    [
        (ds.QGrid(16, 30.0), "$q_x$ [nm$^{-1}$]", "$q_y$ [nm$^{-1}$]", 2 * math.pi / 2.0 * 0.5),
        (ds.AngleGrid(16, 20.0), r"$\theta_x$ [deg]", r"$\theta_y$ [deg]", 20.0 - 2.5 / 2),
        # 16 pixels of 75 um = 1.2 mm across, shown in mm although the experiment is in nm
        (ds.FlatDetector(70e6, 75e3, (16, 16)), "detector X [mm]", "detector Y [mm]", 0.6),
    ],
)
def test_pattern_axes_units_title_and_colours(tmp_path, det, xlabel, ylabel, half):
    exp = ds.Experiment(2.0, det)
    img, mask = _pattern(exp)
    fig = plot_pattern(
        img, exp, tmp_path / "p.png", title="Sphere: radius = 7", label="photons", length_unit="nm", mask=mask
    )
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == (xlabel, ylabel)
    has(fig, "Sphere: radius = 7", "photons", "masked", "0 / below scale")  # the legend names both colours
    ext = ax.images[0].get_extent()
    np.testing.assert_allclose(np.abs(ext), half, rtol=1e-5)
    assert_colour(rgba_at(ax, 8, 8), MASKED_COLOUR)  # masked: grey
    assert_colour(rgba_at(ax, 0, 0), UNDER_COLOUR)  # zero: black, not the mask's grey
    assert not np.allclose(rgba_at(ax, 0, 0), rgba_at(ax, 8, 8))
    plt.close(fig)
    check_png(tmp_path / "p.png")


def test_pattern_without_unit_says_so_and_checks_shapes():
    exp = ds.Experiment(2.0, ds.QGrid(8, 30.0))
    fig = plot_pattern(np.ones((8, 8)), exp)
    assert fig.axes[0].get_xlabel() == "$q_x$ [inverse length]"
    assert "masked" not in texts(fig)  # nothing masked: no legend
    plt.close(fig)
    with pytest.raises(ValueError, match="mask must have"):
        plot_pattern(np.ones((8, 8)), exp, mask=np.ones((4, 4), bool))
    with pytest.raises(ValueError, match="image has shape"):
        plot_pattern(np.ones((4, 8)), exp)


@pytest.mark.parametrize("delta, beta, what", [(0.0, 0.001, "|n - 1|"), (0.0, 0.0, "occupancy")])
def test_shape_preview_of_a_delta_zero_particle_is_not_empty(tmp_path, delta, beta, what):
    shape = ds.Sphere(3.0, delta, beta)
    fig = ds.plot_shape(shape, tmp_path / "s.png", n=20, length_unit="nm")
    slices = [ax for ax in fig.axes if ax.images]
    assert len(slices) == 3
    for ax in slices:
        a = np.asarray(ax.images[0].get_array())
        assert a.max() > 0.5 * (beta or 1.0)  # the particle is visible in every central slice
        assert "[nm]" in ax.get_xlabel() and "[nm]" in ax.get_ylabel()
    has(fig, "Sphere", "radius = 3", "(lengths in nm)", what, "z (beam) [nm]", "slice z = ")
    assert any(t.startswith("slice z = ") and t.endswith(" nm") for t in texts(fig))
    plt.close(fig)
    check_png(tmp_path / "s.png", (200, 600))


def _fit_result(exp):
    """A FitResult built by hand (no optimisation): counts with a zero pixel and a masked block."""
    import fitting

    model = ds.Sphere(300.0, 0.0072, 0.0025)
    th = np.asarray(exp.theta)
    mu = 20.0 * np.sinc(th / th.max() * 3.0) ** 2 + 0.05  # a stand-in for the expected counts
    data = np.random.default_rng(0).poisson(mu).astype(float)
    data[0, 0] = 0.0
    mask = np.ones(data.shape, bool)
    mask[7:9, 7:9] = False
    return fitting.FitResult(
        model=model,
        experiment=exp,
        scale=1.0,
        background=0.0,
        loss=12.0,
        loss_kind="poisson",
        loss_history=np.array([30.0, 15.0, 12.0]),
        free=("radius",),
        values={"radius": np.asarray(300.0)},
        sigmas={"radius": np.asarray(1.5)},
        hessian_ok=True,
        n_steps=3,
        converged=True,
        time_s=1.0,
        compile_s=0.5,
        n_used=int(mask.sum()),
        n_starts=1,
        start_losses=np.array([12.0]),
        alternatives=[],
        data=data,
        mask=mask,
        model_counts=mu,
    )


def test_fit_report_shares_axes_units_and_mask_colour(tmp_path):
    from fitting import plot_report

    exp = ds.Experiment(19.0, ds.FlatDetector(70e6, 300e3, (16, 16)))
    res = _fit_result(exp)
    fig = plot_report(res, tmp_path / "r.png", title="my fit", length_unit="nm")
    data_ax, model_ax, res_ax = (
        ax for ax in fig.axes if ax.get_title().startswith(("data", "model", "resid"))
    )
    for ax in (data_ax, model_ax, res_ax):  # the residual map on the data's axes
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("detector X [mm]", "detector Y [mm]")
        np.testing.assert_allclose(ax.images[0].get_extent(), data_ax.images[0].get_extent())
        assert_colour(rgba_at(ax, 7, 7), MASKED_COLOUR)  # one colour for masked pixels in every panel
    assert_colour(rgba_at(data_ax, 0, 0), UNDER_COLOUR)  # zero counts: black
    # data and model share one colour scale
    assert data_ax.images[0].norm.vmin == model_ax.images[0].norm.vmin
    assert data_ax.images[0].norm.vmax == model_ax.images[0].norm.vmax
    has(
        fig,
        "my fit",
        "radius = 300 +- 1.5",
        "counts per pixel",
        "poisson loss per used pixel",
        "projected thickness [nm]",
        "x [nm]",
        "z (beam) [nm]",
        "masked",
    )
    assert fig.get_layout_engine() is not None  # constrained layout: no overlapping labels
    plt.close(fig)
    check_png(tmp_path / "r.png", (600, 1000))


def test_batch_histograms_have_units_and_titles(tmp_path):
    from fitting._cli_batch import _histograms, histogram_figure

    out = tmp_path / "results.h5"
    rng = np.random.default_rng(1)
    with h5py.File(out, "w") as f:
        g = f.create_group("results")
        g["radius"] = rng.normal(50.0, 2.0, 20)
        g["radius"].attrs["unit"] = "length"
        g["scale"] = rng.uniform(1.0, 2.0, 20)
        g["scale"].attrs["unit"] = "counts per (length^2 sr^-1 sr)"
        g["loss"] = rng.uniform(0.9, 1.1, 20)
        g["loss"].attrs["unit"] = "deviance per pixel"
        g["status"] = np.r_[np.zeros(18, np.int8), np.ones(2, np.int8)]
    png = _histograms(str(out), "nm")
    check_png(png)
    fig = histogram_figure(str(out), "nm")
    for needle in (
        "radius [nm]",
        "scale [counts per (nm^2 sr^-1 sr)]",
        "loss [deviance per pixel]",
        "patterns",
    ):
        has(fig, needle)
    has(fig, "radius: 18 fitted, median", "18 of 20 patterns ok")
    plt.close(fig)
