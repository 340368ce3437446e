"""Benchmark scripts stay runnable (smoke test of their quick mode)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import probcomp as pc

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _quick(script: str, *args: str) -> dict:
    """Run ``benchmarks/<script>`` with ``args`` and parse the JSON it prints."""
    out = subprocess.run(
        [sys.executable, str(BENCH / script), *args], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


@pytest.mark.slow
def test_reverse_diffusion_benchmark_quick():
    data = _quick("reverse_diffusion.py", "--quick")
    assert data["overhead"]["same_samples_as_handwritten"]
    assert data["grouping"]["max_abs_diff"] == 0.0
    assert data["grouping"]["calls_grouped"] * 4 == data["grouping"]["calls_per_window"]


@pytest.mark.slow
def test_product2d_benchmark_quick():
    data = _quick("product2d.py", "--quick", "--json")
    assert "summary" in data


@pytest.mark.slow
def test_annealed_overhead_benchmark_quick():
    assert _quick("annealed_overhead.py", "--quick")["same_samples_as_handwritten"]


@pytest.mark.slow
def test_mixture_negation_benchmark_quick():
    """The analytic mixture (normalised energies) keeps its 0.3 / 0.7 weights under annealed HMC."""
    data = _quick("mixture_negation.py", "--quick", "--json")
    best = data["summary"]["mixture-analytic"]
    assert best["best_in_support"] == 1.0 and best["best_mass_error"]["right"] < 0.05, best


@pytest.mark.slow
def test_panorama_benchmark_quick():
    data = _quick("panorama.py", "--quick", "--json")
    rows = data["variants"]["analytic/stride16"]
    assert rows["stitched"]["max_seam_ratio"] > 2 * rows["per-step-em"]["max_seam_ratio"]


def test_object_discovery_matching_keeps_correct_pairs():
    """One unvisited blob and two slots on another must read as one miss, not three.

    The positions (pixels) are an inversion of in-distribution image 3: summed squared
    error as the assignment cost matched one object, summed distance three; four are found.
    """
    sys.path.insert(0, str(BENCH))
    import numpy as np
    from object_discovery import HIT_MSE, match

    pred = np.array([[12.6, 27.1], [7.3, 2.8], [8.1, 18.8], [23.5, 12.1], [7.3, 6.8]]) / 32
    true = np.array([[8.1, 18.8], [27.0, 24.5], [12.6, 27.1], [23.5, 12.1], [7.2, 5.3]]) / 32
    err = match(pred, true)
    assert int((err < HIT_MSE).sum()) == 4 and err[1] > 0.1
    assert np.allclose(match(pred[:0], true), 1.0)  # nothing predicted: every object missed


def test_object_discovery_logs_compare_on_common_images(tmp_path):
    """Rates from several --verbose logs count only the images every log has."""
    sys.path.insert(0, str(BENCH))
    from object_discovery import summarise_log

    old, new = tmp_path / "old.log", tmp_path / "new.log"
    old.write_text("in-distribution 0 4 {'ours': 3, 'cnn': 4}\nin-distribution 1 5 {'ours': 5, 'cnn': 1}\n")
    new.write_text("noise\nin-distribution 1 5 {'ours': 5}\nin-distribution 2 3 {'ours': 3}\n")
    rates = summarise_log([old, new])["settings"]["in-distribution"]
    assert (rates["images"], rates["objects"]) == (1, 5)
    assert rates["perception_rate"] == {"ours [old]": 1.0, "cnn [old]": 0.2, "ours [new]": 1.0}
    assert summarise_log([old])["settings"]["in-distribution"]["perception_rate"] == {
        "ours": 0.8889,
        "cnn": 0.5556,
    }
    new.write_text("in-distribution 1 4 {'ours': 4}\n")
    with pytest.raises(SystemExit, match="not the same images"):
        summarise_log([old, new])


@pytest.mark.slow
def test_object_discovery_benchmark_quick(tmp_path):
    log = tmp_path / "records.jsonl"
    data = _quick("object_discovery.py", "--quick", "--json", "--log", str(log))
    rows = data["settings"]["in-distribution"]
    assert set(rows) >= {"ours", "ours-single-start", "generative-classifier", "cnn", "detector"}
    assert rows["detector"]["perception_rate"] == 1.0 and data["count"]["images"] == 1
    misses = rows["ours"]["misses"]
    assert misses["search"] + misses["model"] == misses["images"] <= 2
    # the log resumes the run: with no time left, every record comes back from it unchanged
    assert len(log.read_text().splitlines()) == 2 * 5 + 1
    again = _quick("object_discovery.py", "--quick", "--json", "--log", str(log), "--time-limit", "0")
    assert again["settings"] == data["settings"] and again["count"] == data["count"]
    out = subprocess.run(
        [sys.executable, str(BENCH / "object_discovery.py"), "--quick", "--log", str(log), "--draws", "3"],
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0 and "other settings (draws)" in out.stderr


def test_object_discovery_test_set_is_the_same_whatever_its_size():
    """Image i does not depend on how many images are drawn, so runs of any size share a prefix."""
    sys.path.insert(0, str(BENCH))
    from object_discovery import test_set

    x3, lab3, _ = test_set("more-objects", 3, seed=0)
    _, lab5, bg = test_set("new-background", 5, seed=0)
    x8, lab8, _ = test_set("more-objects", 8, seed=0)
    assert torch.equal(x3, x8[:3]) and torch.equal(lab3["xy"], lab8["xy"][:3])
    assert lab8["count"].min() >= 6 and lab5["count"].max() <= 5 and bg == pytest.approx((-0.4,) * 3)
    assert not torch.equal(x8[0], x8[1]) and test_set("in-distribution", 0, seed=0)[0].shape[0] == 0


@pytest.mark.slow
def test_coind_benchmark_quick():
    data = _quick("coind.py", "--quick", "--json")
    row = data["models"]["lam=10"]
    assert 0.0 <= row["jsd_bits"] <= 1.0 and set(row) >= {"marginals", "joints"}
    assert set(row["joints"]) == {"x0_hat", "ddpm", "annealed-ula", "tweedie@0.3"}
    assert 0.0 <= row["joints"]["ddpm"]["in_3sigma"] <= 1.0
    assert isinstance(row["joints"]["tweedie@0.3"]["goal"], bool)
    chain = row["joints"]["ddpm"]["x0_hat_along_chain"]
    assert len(chain) == 9 and len(chain["t=0.3"]) == 2
    assert row["joints"]["tweedie@0.3"]["nfe"] > row["joints"]["ddpm"]["nfe"] * 0.4
    assert data["best"]["composition"] in ("marginals", "joints")


@pytest.mark.slow
def test_coind_shapes_benchmark_quick():
    data = _quick("coind.py", "--task", "shapes", "--quick", "--json")
    assert set(data["models"]) == {"vanilla", "coind lam=1"}
    row = data["models"]["coind lam=1"]
    assert 0.0 <= row["jsd_bits"] <= 1.0
    for how in ("label", "marginals", "joints"):
        assert set(row[f"held_out_{how}"]["per_combination"]) == {"(1, 2)", "(2, 2)"}
    assert 0.0 <= data["classifier"]["shape_accuracy"] <= 1.0


@pytest.mark.slow
def test_attribute_inference_benchmark_quick():
    data = _quick("attribute_inference.py", "--quick", "--json")
    assert data["bayes_classifier"]["seen_accuracy"] == 1.0
    assert data["models"]["vanilla (zoo)"]["composed"]["seen_accuracy"] == 1.0


@pytest.mark.slow
def test_length_generalisation_benchmark_quick():
    data = _quick("length_generalisation.py", "--quick", "--json")
    assert set(data["results"]) == {
        f"{b}/ddpm"
        for b in (
            "empty",
            "empty-learned",
            "empty-precond",
            "bayes",
            "clutter",
            "empty-masked",
            "empty-learned-masked",
            "empty-masked-filled",
            "empty-learned-masked-filled",
            "empty-precond-masked-filled",
        )
    }
    assert data["config"]["mask_radius_px"] == 8.0
    assert set(data["results"]["empty/ddpm"]["per_k"]) == {"1", "3"}


@pytest.mark.slow
def test_whole_part_benchmark_quick():
    data = _quick("whole_part.py", "--quick", "--json")
    assert set(data["methods"]) >= {
        "per-step-em-clip",
        "per-step-em-clip-control",
        "reverse-diffusion-control",
    }
    assert data["real"]["whole_count_ok"] == 1.0 and abs(data["real"]["whole_denoising_loss"] - 1) < 0.5


@pytest.mark.slow
def test_background_object_benchmark_quick():
    data = _quick("background_object.py", "--quick", "--json")
    assert set(data["methods"]) >= {"per-step-em", "per-step-em-clip", "reverse-diffusion", "paste"}
    assert data["real"]["object_at_box"] == 1.0


@pytest.mark.slow
def test_devices_benchmark_quick():
    data = _quick("devices.py", "--quick", "--json")
    assert data["cpu"]["reverse-diffusion/N=2"]["nfe"] > 0 and data["cpu"]["concept-inversion"]["nfe"] > 0


@pytest.mark.slow
def test_frontier_benchmark_quick():
    data = _quick("frontier.py", "--quick")
    rows = data["targets"]["ring-bar"]["configs"]
    assert set(rows) == {"ddpm 100", "recommended 15x2"}
    assert rows["ddpm 100"]["nfe"] == 200 and rows["recommended 15x2"]["mode_err_p90"] < 0.1
    assert (
        not data["summary"]["ring-bar"]["goal_met_within_500_nfe"] or rows["recommended 15x2"]["meets_goal"]
    )


@pytest.mark.slow
def test_lift_rejection_benchmark_quick():
    data = _quick("lift_rejection.py", "--quick")
    assert data["floor_w2"]["mean"] > 0 and data["reverse"]


def test_the_frontier_names_the_configurations_the_defaults_run():
    """The frontier's summary calls two named configurations AnnealedMCMC()'s defaults: they
    must run what AnnealedMCMC() runs, with energies and with scores alone."""
    sys.path.insert(0, str(BENCH))
    import frontier

    from probcomp.inference import AnnealedMCMC
    from probcomp.targets import products

    class ScoreOnly(pc.factors.ScoreFactor):
        def __init__(self, inner):
            super().__init__(inner.event_shape, inner.schedule, f"{inner.name}-score-only")
            self.inner = inner

        def score(self, y, t):
            return self.inner.score(y, t)

    named = {c.name: c for c in frontier.configs()}
    energy = products.ring_bar().scene()
    scores = products.ring_bar().scene(factors=tuple(ScoreOnly(f) for f in products.ring_bar().factors))
    for scene, name in ((energy, frontier.DEFAULT), (scores, frontier.DEFAULT_SCORE_ONLY)):
        want = named[name].make().run(scene, 32, seed=0)
        got = AnnealedMCMC().run(scene, 32, seed=0)
        assert torch.equal(got["x"], want["x"]) and got.stats["nfe_total"] == want.stats["nfe_total"], name


@pytest.mark.slow
def test_decomposition_benchmark_quick():
    """Every model, score and recombination of the Decomp Diffusion / Slot-VAE benchmark runs."""
    data = _quick("decomposition.py", "--quick", "--trend-steps", "2")
    assert set(data["models"]) == {
        "decomp x0", "decomp x0 (2 steps)", "single component", "decomp eps", "decomp x0 (global data)",
        "slot-vae",
    }  # fmt: skip
    assert data["models"]["decomp x0 (2 steps)"]["config"]["steps"] == 2  # the trend: one run, scored early
    for name, row in data["models"].items():
        assert 0 <= row["reconstruction"]["recall"] <= 1, name
        assert -1 <= row["segmentation_ari_fg"] <= 1, name
    assert "recombination" in data["models"]["slot-vae"]
    assert 0 <= data["models"]["decomp x0 (global data)"]["global_recombination"]["closer_to_donor"] <= 1
    assert data["cross_model"]["pairs"] > 0
