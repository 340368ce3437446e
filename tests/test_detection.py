"""The blob detector used to score image models: exact on real data, and its scores can fail."""

import pytest
import torch

from probcomp import datasets
from probcomp.detection import detect, score_detections
from probcomp.errors import ShapeError


@pytest.fixture
def scenes():
    g = torch.Generator().manual_seed(0)
    return datasets.blobs(64, g, num_objects=(1, 5), min_separation=7.0)


def test_detector_finds_every_separated_object(scenes):
    x, lab = scenes
    s = score_detections(detect(x), lab["xy"], lab["mask"], lab["color"])
    assert s["count_accuracy"] == 1.0 and s["hit_rate"] == 1.0 and s["spurious_per_image"] == 0.0
    assert s["position_error_px"] < 0.5 and s["color_accuracy"] == 1.0


def test_scores_detect_wrong_positions_missing_and_extra_objects(scenes):
    x, lab = scenes
    found = detect(x)
    moved = lab["xy"].flip(-1)  # requests at transposed positions
    assert score_detections(found, moved, lab["mask"])["hit_rate"] < 0.3
    empty = torch.full_like(x, -1.0)
    s = score_detections(detect(empty), lab["xy"], lab["mask"])
    assert s["count_accuracy"] == 0.0 and s["mean_count_error"] < 0 and s["hit_rate"] == 0.0
    noisy = x + 0.8 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    assert score_detections(detect(noisy), lab["xy"], lab["mask"])["spurious_per_image"] > 1.0


def test_detector_rejects_bad_shapes():
    with pytest.raises(ShapeError, match="N, C, H, W"):
        detect(torch.zeros(3, 32, 32))
    with pytest.raises(ShapeError, match="detections for"):
        score_detections([], torch.zeros(2, 1, 2))
