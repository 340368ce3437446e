"""Plots draw what they are given (headless) and refuse bad shapes with clear errors."""

import pytest
import torch

import probcomp as pc
from probcomp import ops, plots
from probcomp.factors import Gaussian
from probcomp.inference import AnnealedMCMC, PerStepEM


def test_plots_draw_samples_images_levels_and_graphs(tmp_path):
    g = Gaussian(torch.zeros(2), 0.1 * torch.eye(2))
    fig = plots.samples_2d({"a": torch.randn(50, 2), "b": torch.randn(50, 2)}, lambda x: g.log_prob(x))
    assert len(fig.axes) == 2
    fig.savefig(tmp_path / "s.png")
    fig = plots.image_grid(torch.rand(10, 3, 8, 8) * 2 - 1, ncol=4)
    assert len(fig.axes) == 12 and sum(bool(ax.images) for ax in fig.axes) == 10
    sc = pc.Scene()
    x = sc.control("x", (2,))
    sc.observe("a", x, factor=g)
    res = AnnealedMCMC("hmc", 2, 6).run(sc, 20, seed=0)
    fig = plots.per_level(res, ["accept", "step_size"])
    assert len(fig.axes) == 2 and len(fig.axes[0].lines[0].get_xdata()) == 6
    pano = pc.Scene()
    x = pano.control("x", (8,))
    for j in range(2):
        pano.observe(f"w{j}", x, factor=Gaussian(torch.zeros(4), torch.eye(4)), fn=ops.window(4 * j, 4))
    fig = plots.per_level(PerStepEM(5, 1).run(pano, 4, seed=0), ["objective_after"])
    assert len(fig.axes) == 1
    fig = plots.scene_graph(pano)
    assert len(fig.axes) == 1
    fig.savefig(tmp_path / "g.png")


def test_plots_refuse_bad_shapes():
    with pytest.raises(pc.ShapeError, match="must be \\(N, 2\\)"):
        plots.samples_2d(torch.zeros(5, 3))
    with pytest.raises(pc.ShapeError, match="image_grid"):
        plots.image_grid(torch.zeros(2, 2, 4, 4))
    res = pc.Result({"x": torch.zeros(4, 2)}, {"t": torch.linspace(1, 0, 3)})
    with pytest.raises(pc.ShapeError, match="no per-level stats"):
        plots.per_level(res, ["accept"])


def test_loss_traces_plot_restarts_and_k_curve(tmp_path):
    from probcomp.factors import ConditionalGaussian
    from probcomp.inference import ConceptInversion

    def build(k):
        s = pc.Scene()
        s.observe("bg", value=torch.ones(3), factor=Gaussian(torch.zeros(3), 0.2), weight=1 - k)
        for j in range(k):
            s.observe(
                f"o{j}",
                value=torch.ones(3),
                factor=ConditionalGaussian((3,), 0.2),
                condition=s.control(f"c{j}", (3,)),
            )
        return s

    res = ConceptInversion(steps=20, restarts=3, prune_every=5).choose_k(build, 1, 2, seed=0)
    fig = plots.loss_traces(res, smooth=4)
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 3  # every restart drawn, pruned ones shorter
    fig.savefig(tmp_path / "traces.png")
    res.traces = None
    with pytest.raises(pc.ShapeError, match="no per-restart traces"):
        plots.loss_traces(res)


def test_summary_figure_shows_samples_per_plate_member_beside_informative_diagnostics(tmp_path):
    from probcomp.query import summary_figure

    g = Gaussian(torch.tensor([0.5, -0.5, 0.2]), 0.2)
    sc = pc.Scene()
    sc.observe("a", sc.control("x", (3,)), factor=g)
    res = AnnealedMCMC("hmc", 2, 8, resample="ess").run(sc, 100, seed=0)
    fig = summary_figure(res)
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert {"x[0]", "x[1]", "x[2]", "accept", "step_size"} <= set(labels)
    assert "nfe" not in labels and "resampled" not in labels  # cost and flags are not panels
    assert sum(bool(ax.patches) for ax in fig.axes) == 3  # one histogram per entry on the diagonal
    fig.savefig(tmp_path / "summary.png")
    # a plated control (N, K, d) is drawn per member; a run without per-level stats draws samples only
    plated = pc.Result({"z": torch.randn(50, 3, 2)}, {})
    fig = summary_figure(plated)
    assert {"z[0][0]", "z[1][0]", "z[2][0]"} <= {ax.get_ylabel() for ax in fig.axes}
    flat = pc.Result({"x": torch.randn(20, 2)}, {"t": torch.linspace(1, 0, 4), "ess": torch.ones(4)})
    assert "ess" not in [ax.get_ylabel() for ax in summary_figure(flat).axes]  # a flat panel is dropped
