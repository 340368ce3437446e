"""A plain and an editable install of the repository both import (package_dir mapping)."""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _venv_with_our_dependencies(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    py = path / "bin" / "python"
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # dependencies (torch, pyro, ...) come from the running environment, not from the network
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return py


@pytest.mark.slow
@pytest.mark.parametrize("editable", [False, True], ids=["plain", "editable"])
def test_install_imports(tmp_path, editable):
    py = _venv_with_our_dependencies(tmp_path / "venv")
    src = tmp_path / "src"
    skip = shutil.ignore_patterns(".venv", ".git", "*.egg-info", "__pycache__", "build", ".*_cache")
    shutil.copytree(REPO, src, ignore=skip)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(py),
        "install",
        "-q",
        "--no-deps",
        "--no-build-isolation",
    ]
    subprocess.run([*cmd, *(["-e"] if editable else []), str(src)], check=True, cwd=tmp_path)
    code = (
        "import probcomp, probcomp.inference, probcomp.models;"
        "from probcomp.inference import ReverseDiffusion;"
        "f = probcomp.models.load('ring8');"  # shipped weights travel with the package
        "print(probcomp.__file__); print(probcomp.inference.__file__)"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    out = subprocess.run(
        [str(py), "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path, env=env
    )
    pkg, inf = out.stdout.split()
    if editable:
        assert Path(pkg).is_relative_to(src) and Path(inf) == src / "inference" / "__init__.py"
    else:
        assert "site-packages" in pkg and Path(inf).parent.name == "inference"
        assert Path(inf).parent.parent.name == "probcomp"  # installed as probcomp.inference
    _demo_runs(tmp_path, env)


@pytest.mark.slow
def test_wheel_carries_the_zoo_and_installs_beside_the_tested_dependencies(tmp_path):
    """The wheel holds py.typed and every zoo file (diffusers folders included); installed without
    the network into a fresh environment whose dependencies are the tested versions, its
    requirement ranges resolve to what is there, and the demo runs from the installed package."""
    import zipfile

    src = tmp_path / "src"
    skip = shutil.ignore_patterns(
        ".venv", ".git", "*.egg-info", "__pycache__", "build", ".*_cache", "docs", ".tools"
    )
    shutil.copytree(REPO, src, ignore=skip)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(src),
        ],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("probcomp-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "probcomp/py.typed" in names
    zoo = REPO / "models" / "zoo"
    shipped = {f"probcomp/models/zoo/{p.relative_to(zoo)}" for p in zoo.rglob("*") if p.is_file()}
    assert shipped and shipped <= names, sorted(shipped - names)[:5]
    py = _venv_with_our_dependencies(tmp_path / "venv")
    # no --no-deps: pip must find every requirement (as ranges) satisfied by the tested versions
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-index", str(wheel)],
        check=True,
        cwd=tmp_path,
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = "1"
    code = (
        "import probcomp; from probcomp.models.checkpoint import ZOO_DIR; print(probcomp.__file__);"
        "print(' '.join(sorted(p.name for p in ZOO_DIR.iterdir() if p.is_dir())))"
    )
    out = subprocess.run(
        [str(py), "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path, env=env
    )
    lines = out.stdout.splitlines()
    assert "site-packages" in lines[0]
    folders = {p.name for p in zoo.iterdir() if p.is_dir()}
    assert set(lines[1].split()) == folders  # the diffusers-format zoo folders travel too
    _demo_runs(tmp_path, env)


def _demo_runs(tmp_path, env) -> None:
    """``probcomp demo`` from the installed console script, in a folder away from the checkout."""
    cli = subprocess.run(
        [
            str(tmp_path / "venv" / "bin" / "probcomp"),
            "demo",
            "--samples",
            "20",
            "--steps",
            "3",
            "--png",
            "",
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert cli.returncode == 0, cli.stderr
    assert '"rows"' in cli.stdout
