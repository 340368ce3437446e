"""Benchmark scripts stay runnable (smoke test of their quick mode)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
def test_reverse_diffusion_benchmark_quick():
    out = subprocess.run(
        [sys.executable, str(BENCH / "reverse_diffusion.py"), "--quick"],
        capture_output=True,
        text=True,
        check=True,
    )
    data = json.loads(out.stdout)
    assert data["overhead"]["same_samples_as_handwritten"]
    assert data["grouping"]["max_abs_diff"] == 0.0
    assert data["grouping"]["calls_grouped"] * 4 == data["grouping"]["calls_per_window"]


@pytest.mark.slow
def test_product2d_benchmark_quick():
    out = subprocess.run(
        [sys.executable, str(BENCH / "product2d.py"), "--quick", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    data = json.loads(out.stdout)
    assert "summary" in data


@pytest.mark.slow
def test_annealed_overhead_benchmark_quick():
    out = subprocess.run(
        [sys.executable, str(BENCH / "annealed_overhead.py"), "--quick"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout)["same_samples_as_handwritten"]
