"""Group metrics of subpopulation shift (probcomp.metrics) and the COIND utility benchmark's quick mode."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import probcomp as pc
from probcomp import metrics

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _from_confusion(confusion: dict[int, list[list[int]]]) -> tuple[torch.Tensor, ...]:
    """Labels, predictions and groups realising a confusion matrix per group: ``[g][true][pred]`` counts."""
    t, p, g = [], [], []
    for group, matrix in confusion.items():
        for true, row in enumerate(matrix):
            for pred, count in enumerate(row):
                t += [true] * count
                p += [pred] * count
                g += [group] * count
    return torch.tensor(t), torch.tensor(p), torch.tensor(g)


# two classes, three groups; per group [true][pred] counts
CONFUSION = {
    0: [[8, 2], [0, 0]],  # 8/10 right
    1: [[0, 0], [1, 3]],  # 3/4 right
    2: [[3, 1], [4, 2]],  # 5/10 right: the worst group
}


def test_known_confusion_matrix_gives_exact_group_metrics():
    t, p, g = _from_confusion(CONFUSION)
    # class 0: 8 + 0 + 3 right of 10 + 0 + 4; class 1: 0 + 3 + 2 right of 0 + 4 + 6
    assert metrics.balanced_accuracy(t, p) == pytest.approx((11 / 14 + 5 / 10) / 2, abs=0)
    assert metrics.group_accuracies(t, p, g) == {0: 0.8, 1: 0.75, 2: 0.5}
    assert metrics.worst_group_accuracy(t, p, g) == 0.5
    # a constant guess: accuracy tracks the class frequency, balanced accuracy does not
    y = torch.tensor([0] * 9 + [1])
    assert metrics.balanced_accuracy(y, torch.zeros(10, dtype=torch.long)) == 0.5
    assert metrics.balanced_accuracy(y, y) == 1.0


def test_groups_as_attribute_tuples_and_expected_order():
    t = np.array([0, 0, 1, 1, 2])
    p = np.array([0, 1, 1, 1, 0])
    combos = np.array([[0, 0], [0, 0], [1, 2], [1, 0], [2, 2]])  # (shape, colour) per example
    acc = metrics.group_accuracies(t, p, combos, expected=[(2, 2), (0, 0), (1, 0), (1, 2)])
    assert list(acc) == [(2, 2), (0, 0), (1, 0), (1, 2)]
    assert acc == {(2, 2): 0.0, (0, 0): 0.5, (1, 0): 1.0, (1, 2): 1.0}
    assert metrics.worst_group_accuracy(list(t), list(p), combos) == 0.0


def test_group_metrics_reject_bad_input():
    t = torch.tensor([0, 1, 1])
    with pytest.raises(pc.ShapeError, match="3 labels but y_pred has 2"):
        metrics.balanced_accuracy(t, t[:2])
    with pytest.raises(pc.ShapeError, match="one group per label"):
        metrics.worst_group_accuracy(t, t, torch.tensor([0, 1]))
    with pytest.raises(pc.ShapeError, match="empty"):
        metrics.balanced_accuracy(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long))
    with pytest.raises(pc.DataError, match="integer class indices"):
        metrics.balanced_accuracy(t, torch.tensor([0.2, 0.9, 0.7]))
    with pytest.raises(pc.DataError, match=r"group\(s\) \[3\] have no examples"):
        metrics.worst_group_accuracy(t, t, t, expected=[0, 1, 3])
    with pytest.raises(pc.ShapeError, match="1-D"):
        metrics.balanced_accuracy(t[:, None], t[:, None])


@pytest.mark.slow
def test_coind_utility_benchmark_quick(tmp_path):
    """The benchmark runs end to end on throw-away models and states a verdict from its numbers."""
    out = subprocess.run(
        [sys.executable, str(BENCH / "coind_utility.py"), "--quick", "--cache", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    data = json.loads(out.stdout)
    rows = data["shapes"]["conditions"]
    assert {"real", "real + group DRO"} <= set(rows)
    assert any(k.startswith("synthetic coind") for k in rows) and any(
        k.startswith("real + synthetic") for k in rows
    )
    for row in rows.values():
        for m in ("accuracy", "balanced_accuracy", "worst_group_accuracy", "held_out_accuracy"):
            assert 0.0 <= row[m]["mean"] <= 1.0 and row[m]["std"] >= 0.0
        assert row["worst_group_accuracy"]["mean"] <= row["accuracy"]["mean"] + 1e-9
    assert isinstance(data["verdict"]["claim_holds"], bool)
    assert set(data["toy"]["conditions"]) >= {"real", "real + group DRO"}
