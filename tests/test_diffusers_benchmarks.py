"""The diffusers benchmark scripts stay runnable (their quick modes, parsed JSON)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("diffusers")

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
ZOO = Path(__file__).resolve().parents[1] / "models" / "zoo" / "shapes-unet"


def _quick(script: str, *args: str) -> dict:
    out = subprocess.run(
        [sys.executable, str(BENCH / script), "--quick", *args], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def test_latent_scenes_benchmark_quick():
    data = _quick("diffusers_latent_scenes.py")
    assert {r["task"] for r in data["rows"]} == {"panorama", "background_object", "whole_part"}
    pano = next(r for r in data["rows"] if r["task"] == "panorama" and r["engine"] == "per-step-em")
    assert pano["controls"] == {"x": [4, 8, 16]} and pano["decoded_shape"] == [3, 16, 32]
    terms = {"panorama": 3, "background_object": 3, "whole_part": 2}  # all scored in one call per level
    assert all(r["finite"] and r["nfe_total"] == terms[r["task"]] * r["unet_calls"] for r in data["rows"])


@pytest.mark.skipif(not ZOO.exists(), reason="the shipped shapes-unet folder is missing")
def test_memory_benchmark_quick():
    data = _quick("diffusers_memory.py", "--autocast", "none", "--max-batch", "none,2")
    rows = data["rows"]
    assert [r["batch"] for r in rows] == [1, 4, 1, 4] and all(r["finite"] for r in rows)
    assert data["composition"]["shared"]["unet_calls_per_level"] == 1.0
    assert data["composition"]["separate"]["unet_calls_per_level"] == 3.0


@pytest.mark.skipif(not ZOO.exists(), reason="the shipped shapes-unet folder is missing")
def test_composition_benchmark_quick():
    data = _quick("diffusers_composition.py")
    assert {r["op"] for r in data["rows"]} == {"and", "not", "only"}
    for r in data["rows"]:
        assert r["nfe_per_term"] == 6 and 0.0 <= r["conformity"] <= 1.0
