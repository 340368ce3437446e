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
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from probcomp import schedules as sched
from probcomp._version import __version__
from probcomp.errors import DataError, ProbcompError

from .energy import FORMS, EnergyModel
from .networks import build
from .parameterisation import NetworkFactor, Preconditioned

__all__ = ["FORMAT", "ZOO_DIR", "load", "read_config", "resolve", "save"]

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
    if isinstance(model, EnergyModel):
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


def resolve(name_or_path: str | Path) -> Path:
    """The JSON path of a zoo name or of a checkpoint path (with or without suffix)."""
    p = Path(name_or_path)
    stem = _stem(p)
    candidates = [ZOO_DIR / f"{p.name}.json"] if p.parent == Path(".") and stem == p else []
    candidates.append(_with(stem, ".json"))
    for c in candidates:
        if c.exists():
            return c
    zoo = sorted(q.stem for q in ZOO_DIR.glob("*.json"))
    raise DataError(f"no checkpoint {str(name_or_path)!r}: not a zoo model ({', '.join(zoo)}) nor a file")


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


def load(name_or_path: str | Path) -> NetworkFactor:
    """A ready :class:`NetworkFactor` from a zoo name or a checkpoint path."""
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
    try:
        net = build(cfg["architecture"])
        schedule = sched.from_config(cfg["schedule"])
    except (ProbcompError, KeyError, TypeError, ValueError) as e:
        raise DataError(f"checkpoint {str(path)!r}: bad architecture or schedule: {e}") from None
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise DataError(f"weights file {str(weights)!r} cannot be read: {e}") from None
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[:3]
        raise DataError(
            f"weights in {str(weights)!r} do not match the architecture: {' '.join(first)}"
        ) from None
    param = cfg["parameterisation"]
    if param == "eps":
        model: torch.nn.Module = net
    elif param == "eps-precond":
        model = Preconditioned(net, schedule, float(cfg.get("sigma_data", 0.5)))
    elif param.startswith("energy-") and param[7:] in FORMS:
        model = EnergyModel(net, param[7:], init_output=False)
    else:
        raise DataError(f"checkpoint {str(path)!r}: unknown parameterisation {param!r}")
    meta = {k: v for k, v in cfg.items() if not k.startswith("_")}
    return NetworkFactor(
        model.eval(), tuple(cfg["event_shape"]), schedule, name=cfg.get("name", path.stem), meta=meta
    )
