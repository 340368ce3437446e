"""Safe checkpoints: safetensors weights plus a JSON config; loading never executes code.

A checkpoint ``NAME`` is two files, ``NAME.safetensors`` (tensors only) and
``NAME.json``, which records the architecture, schedule, parameterisation,
conditioning spec, event shape, training data and run, quality numbers, package
version and the SHA-256 of the weights file.  :func:`load` rebuilds only known
architectures from that JSON, checks the checksum, and loads the tensors
strictly; any mismatch raises :class:`~probcomp.errors.DataError` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from probcomp import schedules as sched
from probcomp._version import __version__
from probcomp.errors import DataError, ProbcompError

from .decomposition import Decomposition
from .energy import FORMS, EnergyModel
from .networks import build, event_shape_for
from .parameterisation import NetworkFactor, Preconditioned

__all__ = ["FORMAT", "PICKLE_SUFFIXES", "ZOO_DIR", "load", "read_config", "resolve", "save"]

FORMAT = "probcomp-checkpoint/1"
ZOO_DIR = Path(__file__).resolve().parent / "zoo"


def _with(stem: Path, suffix: str) -> Path:
    """``stem`` + ``suffix`` (names like ``box-0.7`` keep their dot: no ``with_suffix``)."""
    return stem.parent / (stem.name + suffix)


def _stem(path: Path) -> Path:
    """A checkpoint path without its ``.json`` / ``.safetensors`` suffix, if it has one."""
    for suffix in (".json", ".safetensors"):
        if path.name.endswith(suffix):
            return path.parent / path.name[: -len(suffix)]
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save(
    stem: str | Path,
    model: torch.nn.Module,
    *,
    schedule: sched.Schedule,
    event_shape: tuple[int, ...],
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write ``stem.safetensors`` and ``stem.json``; return the JSON path."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    extra: dict[str, Any] = {}
    if isinstance(model, Decomposition):  # saved whole
        net, param = model, "decomposition"
        if model.config["schedule"] != schedule.config():
            raise DataError("a Decomposition is saved with its own schedule, model.schedule")
    elif isinstance(model, EnergyModel):
        net, param = model.net, f"energy-{model.form}"
    elif isinstance(model, Preconditioned):
        net, param, extra = model.net, "eps-precond", {"sigma_data": model.sigma_data}
        if model.schedule != schedule:
            raise DataError("the preconditioning schedule differs from the checkpoint's schedule")
    else:
        net, param = model, "eps"
    if not hasattr(net, "config"):
        raise DataError("only probcomp networks (with a .config) can be checkpointed")
    weights = _with(stem, ".safetensors")
    state = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    save_file(state, str(weights))
    config = {
        "format": FORMAT,
        "name": stem.name,
        "architecture": net.config,
        "parameterisation": param,
        **extra,
        "schedule": schedule.config(),
        "event_shape": list(event_shape),
        "package_version": __version__,
        "weights_sha256": _sha256(weights),
        **(meta or {}),
    }
    path = _with(stem, ".json")
    path.write_text(json.dumps(config, indent=1) + "\n")
    return path


#: suffixes of pickled torch files, which probcomp refuses to load (unpickling can execute code)
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")


def resolve(name_or_path: str | Path) -> Path:
    """The JSON path of a zoo name or of a checkpoint path (with or without suffix).

    Every way of not being a checkpoint has its own :class:`DataError`: an unknown zoo name,
    a missing file, a directory, a pickled ``.pt`` file (refused: loading it could execute
    code), weights without their JSON config, or some other file.
    """
    if not isinstance(name_or_path, (str, Path)) or not str(name_or_path):
        raise DataError(
            f"a checkpoint is a zoo name or a path to NAME.json / NAME.safetensors, got {name_or_path!r}"
        )
    p = Path(name_or_path)
    stem = _stem(p)
    bare = p.parent == Path(".") and stem == p
    candidates = [ZOO_DIR / f"{p.name}.json"] if bare else []
    candidates.append(_with(stem, ".json"))
    for c in candidates:
        if c.is_file():
            return c
    shown = str(name_or_path)
    if p.name.lower().endswith(PICKLE_SUFFIXES):
        if p.exists():
            raise DataError(
                f"{shown!r} is a pickled torch file: probcomp refuses to load it, because unpickling can "
                "execute code; a checkpoint is NAME.safetensors + NAME.json (written by probcomp.models.save)"
            )
        raise DataError(
            f"checkpoint file {shown!r} does not exist (and pickled .pt files are refused anyway)"
        )
    if p.is_dir() or (bare and (ZOO_DIR / p.name).is_dir()):
        where = p if p.is_dir() else ZOO_DIR / p.name
        raise DataError(
            f"{str(where)!r} is a directory, not a checkpoint: a probcomp checkpoint is the file pair "
            "NAME.json + NAME.safetensors (pass either); load a diffusers folder with "
            "probcomp.models.from_diffusers"
        )
    weights = _with(stem, ".safetensors")
    if weights.is_file():
        raise DataError(
            f"weights file {str(weights)!r} has no config {_with(stem, '.json').name!r} beside it: a "
            "checkpoint is the pair NAME.safetensors + NAME.json written by probcomp.models.save"
        )
    if p.is_file():
        raise DataError(f"{shown!r} is not a probcomp checkpoint: expected NAME.json beside NAME.safetensors")
    if bare:
        zoo = sorted(q.stem for q in ZOO_DIR.glob("*.json"))
        raise DataError(f"no checkpoint {shown!r}: not a zoo model ({', '.join(zoo)}) nor a file")
    if p.name.endswith((".json", ".safetensors")):
        raise DataError(f"checkpoint file {shown!r} does not exist")
    raise DataError(
        f"no checkpoint {shown!r}: neither {_with(stem, '.json').name!r} nor "
        f"{_with(stem, '.safetensors').name!r} exists in {str(stem.parent)!r}"
    )


def read_config(name_or_path: str | Path) -> dict[str, Any]:
    """The validated JSON config of a checkpoint."""
    path = resolve(name_or_path)
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"checkpoint config {str(path)!r} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise DataError(f"{str(path)!r} is not a {FORMAT} config")
    missing = {"architecture", "parameterisation", "schedule", "event_shape", "weights_sha256"} - set(cfg)
    if missing:
        raise DataError(f"checkpoint config {str(path)!r} lacks {sorted(missing)}")
    cfg["_path"] = str(path)
    return cfg


def _event_shape(cfg: dict[str, Any], path: Path) -> tuple[int, ...]:
    """The config's event shape, checked against its architecture (an edited JSON is caught here)."""
    raw = cfg["event_shape"]
    ok = isinstance(raw, list) and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in raw)
    if not ok or not raw:
        raise DataError(
            f"checkpoint config {str(path)!r}: event_shape must be a list of positive ints, got {raw!r}"
        )
    shape = tuple(raw)
    arch = cfg["architecture"]
    if not isinstance(arch, dict):
        raise DataError(f"checkpoint config {str(path)!r}: architecture must be an object, got {arch!r}")
    try:
        want = event_shape_for(arch)
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(
            f"checkpoint config {str(path)!r}: bad architecture ({type(e).__name__}: {e})"
        ) from None
    if want is None:
        return shape  # build() names an unknown kind
    what = (
        f"a resmlp of dim {want[0]}"
        if arch.get("kind") == "resmlp"
        else f"a unet of {want[0]} channels and size {want[1]}"
    )
    if shape != want:
        raise DataError(
            f"checkpoint config {str(path)!r}: event_shape {shape} does not match the architecture "
            f"({what} takes event_shape {want})"
        )
    return shape


def _check_tensors(state: dict[str, torch.Tensor], net: torch.nn.Module, weights: Path, path: Path) -> None:
    """Every tensor the architecture needs, of its shape and finite; nothing else (first mismatch named)."""
    expected = net.state_dict()
    head = f"weights in {str(weights)!r} do not match the architecture in {path.name!r}"
    for k, v in expected.items():
        if k not in state:
            raise DataError(f"{head}: tensor {k!r} {tuple(v.shape)} is missing")
        if tuple(state[k].shape) != tuple(v.shape):
            raise DataError(
                f"{head}: tensor {k!r} has shape {tuple(state[k].shape)}, the architecture expects "
                f"{tuple(v.shape)}"
            )
    extra = [k for k in state if k not in expected]
    if extra:
        raise DataError(f"{head}: tensor {extra[0]!r} is not part of it ({len(extra)} such tensors)")
    for k, v in state.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise DataError(f"weights in {str(weights)!r}: tensor {k!r} holds NaN or infinite values")


def load(name_or_path: str | Path) -> NetworkFactor:
    """A ready :class:`NetworkFactor` from a zoo name or a checkpoint path.

    A checkpoint of a :class:`~probcomp.models.decomposition.Decomposition` is refused with a
    pointer to :func:`load_decomposition` (its components are factors only once an image is
    decomposed).

    Only JSON and safetensors are read (no code runs).  The config is checked against the
    weights before anything is built: checksum, event shape against architecture, and every
    tensor's name and shape; the first mismatch raises a :class:`DataError` naming the file.
    """
    net, cfg, schedule, event_shape = _verified(name_or_path)
    path = Path(cfg["_path"])
    param = cfg["parameterisation"]
    if isinstance(net, Decomposition):
        raise DataError(
            f"checkpoint {str(path)!r} is a Decomposition (Decomp Diffusion), not a factor: load it with "
            "probcomp.models.load_decomposition and bind its latents with .component"
        )
    meta = {k: v for k, v in cfg.items() if not k.startswith("_")}
    if param == "eps":
        model: torch.nn.Module = net
    elif param == "eps-precond":
        model = Preconditioned(net, schedule, float(cfg.get("sigma_data", 0.5)))
    else:
        model = EnergyModel(net, param[7:], init_output=False)
    name = cfg.get("name")
    return NetworkFactor(
        model.eval(),
        event_shape,
        schedule,
        name=name if isinstance(name, str) and name else path.stem,
        meta=meta,
    )


def load_decomposition(name_or_path: str | Path) -> Decomposition:
    """A trained :class:`~probcomp.models.decomposition.Decomposition` from a zoo name or a path,
    checked like :func:`load` (no code runs); ``meta`` holds its config."""
    net, cfg, _, _ = _verified(name_or_path)
    if not isinstance(net, Decomposition):
        raise DataError(
            f"checkpoint {cfg['_path']!r} is a {cfg['parameterisation']} network, not a Decomposition: "
            "load it with probcomp.models.load"
        )
    net.meta = {k: v for k, v in cfg.items() if not k.startswith("_")}
    return net.eval()


def _verified(name_or_path: str | Path) -> tuple[torch.nn.Module, dict[str, Any], sched.Schedule, tuple]:
    """The network of a checkpoint with its weights loaded, after every check of :func:`load`."""
    cfg = read_config(name_or_path)
    path = Path(cfg["_path"])
    weights = _with(_stem(path), ".safetensors")
    if not weights.exists():
        raise DataError(f"weights file {str(weights)!r} for {str(path)!r} is missing")
    if _sha256(weights) != cfg["weights_sha256"]:
        raise DataError(
            f"weights file {str(weights)!r} does not match the SHA-256 recorded in {path.name} "
            "(corrupt, truncated or replaced)"
        )
    event_shape = _event_shape(cfg, path)
    param = cfg["parameterisation"]
    if not isinstance(param, str) or not (
        param in ("eps", "eps-precond", "decomposition")
        or (param.startswith("energy-") and param[7:] in FORMS)
    ):
        raise DataError(f"checkpoint {str(path)!r}: unknown parameterisation {param!r}")
    sigma_data = cfg.get("sigma_data", 0.5)
    if param == "eps-precond" and (
        isinstance(sigma_data, bool)
        or not isinstance(sigma_data, (int, float))
        or not math.isfinite(sigma_data)
        or sigma_data <= 0
    ):
        raise DataError(f"checkpoint {str(path)!r}: sigma_data must be a positive number, got {sigma_data!r}")
    try:
        net = build(cfg["architecture"])
        schedule = sched.from_config(cfg["schedule"])
    except (ProbcompError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise DataError(f"checkpoint {str(path)!r}: bad architecture or schedule: {e}") from None
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise DataError(f"weights file {str(weights)!r} cannot be read: {e}") from None
    _check_tensors(state, net, weights, path)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[:3]
        raise DataError(
            f"weights in {str(weights)!r} do not match the architecture: {' '.join(first)}"
        ) from None
    return net, cfg, schedule, event_shape
