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


def test_readme_numbers_come_from_the_product2d_json():
    d = json.loads((ROOT / "benchmarks" / "results" / "product2d.json").read_text())
    s = d["variants"]["analytic"]["samplers"]
    quoted = {
        "W2 {:.3f} against the two-draw floor {:.3f}": (
            s["hmc-ais-always"]["w2"]["mean"],
            d["summary"]["analytic"]["floor_w2"],
        ),
        "within {:.3f} of\nthe exact one": (s["hmc-ais-always"]["mode_err_max"]["mean"],),
        "W2 {:.3f} with a mode-weight error\nof up to {:.3f}": (
            s["ddpm"]["w2"]["mean"],
            s["ddpm"]["mode_err_max"]["mean"],
        ),
    }
    for text, values in quoted.items():
        assert text.format(*values) in README, text.format(*values)
