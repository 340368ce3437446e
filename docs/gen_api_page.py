"""Write the API reference page from the ``__all__`` of the three public namespaces.

Every name in ``probcomp.__all__``, ``probcomp.inference.__all__`` and
``probcomp.models.__all__`` gets an entry; modules among them get a page with their members
(their own ``__all__``).  Run by ``docs/conf.py``; ``tests/test_docs.py`` checks the coverage.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

NAMESPACES = {
    "probcomp": "Scenes, programs, results and errors; the language's modules.",
    "probcomp.inference": "The engines, their contract and registry, kernels and the SMC layer.",
    "probcomp.models": "Learned score factors: networks, parameterisation, training, checkpoints.",
}
SUBPACKAGES = {"probcomp.inference", "probcomp.models"}  # documented in their own section


def public_names(namespace: str) -> list[str]:
    return list(importlib.import_module(namespace).__all__)


def page() -> str:
    out = [
        "# API reference",
        "",
        "Generated from the docstrings (`docs/gen_api_page.py`): every name that",
        "`probcomp`, `probcomp.inference` and `probcomp.models` export in `__all__`.",
        "",
    ]
    for ns, blurb in NAMESPACES.items():
        mod = importlib.import_module(ns)
        out += [
            f"## `{ns}`",
            "",
            blurb,
            "",
            "```{eval-rst}",
            f".. automodule:: {ns}",
            "   :no-members:",
            "```",
            "",
        ]
        entries, links = [], []
        for name in public_names(ns):
            full = f"{ns}.{name}"
            if full in SUBPACKAGES:
                links.append(f"- `{full}`: see [below](#{full.replace('.', '-')})")
                continue
            obj = getattr(mod, name)
            entries.append((full, type(obj).__name__ == "module"))
        if links:
            out += [*links, ""]
        out += ["```{eval-rst}", f".. currentmodule:: {ns}", "", ".. autosummary::", "   :toctree: generated"]
        out += ["   :nosignatures:", ""] + [f"   {full.rsplit('.', 1)[1]}" for full, _ in entries]
        out += ["```", ""]
    return "\n".join(out)


def main(target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    text = page()
    if not target.is_file() or target.read_text() != text:
        target.write_text(text)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "api" / "index.md")
