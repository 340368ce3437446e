"""Lay out the package as it is installed, for a type checker: OUT/probcomp mirrors probcomp/,
with models/ and inference/ mirrored in as probcomp.models and probcomp.inference (setuptools'
package_dir mapping, which static checkers cannot follow through an editable install).  Files are
hard links (copies where linking fails), so the tree costs no space and is rebuilt on every call."""

import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _mirror(src: Path, dst: Path) -> None:
    for p in src.rglob("*"):
        if "__pycache__" in p.parts or p.suffix not in (".py", ".pyi", ".typed"):
            continue
        q = dst / p.relative_to(src)
        q.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(p, q)
        except OSError:
            shutil.copy2(p, q)


def main(out: Path) -> None:
    pkg = out / "probcomp"
    shutil.rmtree(pkg, ignore_errors=True)
    _mirror(ROOT / "probcomp", pkg)
    _mirror(ROOT / "models", pkg / "models")
    _mirror(ROOT / "inference", pkg / "inference")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
