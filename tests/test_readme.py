"""The README's Python snippets run, in order, and its numbers are those of the benchmark JSON."""

import json
import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_is_short_and_its_python_blocks_run():
    assert len(README.splitlines()) <= 200
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert len(blocks) >= 2
    torch.set_num_threads(1)
    ns: dict = {}
    for block in blocks:  # later blocks use the names of earlier ones, as a reader would
        exec(compile(block, "README.md", "exec"), ns)
    assert ns["res"]["x"].shape == (1000, 2)


def test_readme_numbers_come_from_the_frontier_json():
    d = json.loads((ROOT / "benchmarks" / "results" / "frontier.json").read_text())
    rows = d["targets"]["ring-bar"]["configs"]
    ours, ddpm, floor = rows["recommended 45x2"], rows["ddpm 100"], rows["recommended 100x6"]
    quoted = {
        "2 HMC transitions, {:.0f} evaluations per particle) reach W2 {:.2f}× the floor": (
            ours["nfe"],
            ours["w2_ratio"],
        ),
        "mode-weight error {:.3f} (90th percentile) and the modes' width within {:.2f} nats": (
            ours["mode_err_p90"],
            abs(ours["ll_gap"]),
        ),
        "stays at {:.1f}× the floor with mode-weight errors of {:.2f}": (
            ddpm["w2_ratio"],
            ddpm["mode_err_p90"],
        ),
        "100 levels × 6 transitions ({:.0f} evaluations) annealed HMC is at the floor ({:.2f}×)": (
            round(floor["nfe"], -2),
            floor["w2_ratio"],
        ),
    }
    text_of_readme = " ".join(README.split())
    for text, values in quoted.items():
        assert text.format(*values) in text_of_readme, text.format(*values)


def test_readme_numbers_come_from_the_loop_cost_json():
    d = json.loads((ROOT / "benchmarks" / "results" / "loop_cost.json").read_text())
    row = next(
        r for r in d["rows"] if (r["factors"], r["kernel"], r["particles"]) == ("ring_bar_2d", "hmc", 2000)
    )
    s = row["seconds_per_1000_nfe"]
    text = (
        f"it takes {s['compiled']:.2f} s per 1000 evaluations against {s['eager']:.2f} s eager, and a "
        f"hand-written loop of the same math compiled the same way takes {s['reference']:.2f} s"
    )
    assert text in " ".join(README.split()), text
