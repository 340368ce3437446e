"""Reading diffusers folders from local disk: which parts exist, their weights, refusals.

Only local files are read (``local_files_only=True``) and only safetensors weights are
loaded (``use_safetensors=True``): a pickle checkpoint (``*.bin``, ``*.pt``, ``*.ckpt``)
can execute code when unpickled, so a folder holding one and no safetensors is refused
unless the caller passes ``allow_pickle=True``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probcomp.errors import DataError, FactorError, first_line

__all__ = ["Parts", "load_parts", "resolve_source"]

ZOO_DIR = Path(__file__).resolve().parents[1] / "zoo"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


@dataclass
class Parts:
    """The components of a diffusers model or pipeline (absent ones are ``None``)."""

    unet: Any
    scheduler: Any
    text_encoder: Any = None
    tokenizer: Any = None
    vae: Any = None
    meta: dict[str, Any] | None = None
    path: Path | None = None


def resolve_source(source: str | Path, subfolder: str | None) -> Path:
    """The folder ``source`` names: a path, or the name of a diffusers folder in the zoo."""
    p = Path(source)
    if not p.exists() and p.parent == Path(".") and (ZOO_DIR / p.name).is_dir():
        p = ZOO_DIR / p.name
    if subfolder:
        p = p / subfolder
    if not p.is_dir():
        zoo = sorted(q.name for q in ZOO_DIR.iterdir() if q.is_dir() and (q / "model_index.json").exists())
        raise DataError(
            f"from_diffusers: no folder {str(p)!r} (a local diffusers folder, or one of the zoo's {zoo})"
        )
    return p


def _json(path: Path) -> dict[str, Any]:
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"from_diffusers: {str(path)!r} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise DataError(f"from_diffusers: {str(path)!r} is not a JSON object")
    return cfg


def _check_weights(folder: Path, allow_pickle: bool) -> bool:
    """Whether ``folder``'s weights are safetensors; refuse pickles unless ``allow_pickle``."""
    files = [q for q in folder.iterdir() if q.is_file()]
    if any(q.name.endswith(".safetensors") or q.name.endswith(".safetensors.index.json") for q in files):
        return True
    pickles = sorted(q for q in files if q.suffix in PICKLE_SUFFIXES)
    if pickles and not allow_pickle:
        raise DataError(
            f"from_diffusers: {str(pickles[0])!r} is a pickle checkpoint (unpickling can run code) and the "
            "folder has no .safetensors weights; convert it, or pass allow_pickle=True if you trust the file"
        )
    if not pickles:
        raise DataError(f"from_diffusers: {str(folder)!r} holds no weights (no *.safetensors file)")
    return False


def _model(folder: Path, library: Any, *, allow_pickle: bool, dtype: Any, what: str) -> Any:
    """Instantiate the model class named in ``folder/config.json`` from its local weights."""
    cfg_path = folder / "config.json"
    if not cfg_path.exists():
        raise DataError(f"from_diffusers: the {what} folder {str(folder)!r} has no config.json")
    cfg = _json(cfg_path)
    safe = _check_weights(folder, allow_pickle)
    names = [cfg.get("_class_name"), *(cfg.get("architectures") or [])]
    cls = next((getattr(library, n) for n in names if isinstance(n, str) and hasattr(library, n)), None)
    if cls is None:
        raise DataError(
            f"from_diffusers: {str(cfg_path)!r} names no {library.__name__} model class "
            f"(_class_name / architectures: {[n for n in names if n]})"
        )
    kw: dict[str, Any] = {"local_files_only": True, "use_safetensors": safe}
    if dtype is not None:
        kw["torch_dtype"] = dtype
    if library.__name__ == "diffusers":
        kw["low_cpu_mem_usage"] = False  # (no accelerate needed)
    try:
        return cls.from_pretrained(str(folder), **kw)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        first = first_line(e) or type(e).__name__
        raise DataError(f"from_diffusers: cannot load the {what} in {str(folder)!r}: {first}") from None


def _scheduler(folder: Path, library: Any) -> Any:
    for name in ("scheduler_config.json", "config.json"):
        cfg_path = folder / name
        if cfg_path.exists():
            break
    else:
        raise DataError(f"from_diffusers: {str(folder)!r} has no scheduler_config.json")
    cfg = _json(cfg_path)
    cls = getattr(library, str(cfg.get("_class_name", "")), None)
    if cls is None or not hasattr(cls, "from_config"):
        raise DataError(
            f"from_diffusers: {str(cfg_path)!r} names no diffusers scheduler ({cfg.get('_class_name')!r})"
        )
    return cls.from_config(cfg)


def load_parts(folder: Path, *, allow_pickle: bool = False, dtype: Any = None) -> Parts:
    """Load a model folder (``config.json`` + weights) or a pipeline folder (``unet/``, ``scheduler/``...)."""
    import diffusers
    import transformers

    meta = _json(folder / "probcomp.json") if (folder / "probcomp.json").exists() else {}
    if (folder / "unet").is_dir() or (folder / "model_index.json").exists():
        if not (folder / "unet").is_dir():
            raise DataError(f"from_diffusers: the pipeline folder {str(folder)!r} has no unet/ subfolder")
        if not (folder / "scheduler").is_dir():
            raise DataError(
                f"from_diffusers: the pipeline folder {str(folder)!r} has no scheduler/ subfolder"
            )
        unet = _model(folder / "unet", diffusers, allow_pickle=allow_pickle, dtype=dtype, what="unet")
        scheduler = _scheduler(folder / "scheduler", diffusers)
        parts = Parts(unet, scheduler, meta=meta, path=folder)
        if (folder / "vae").is_dir():
            parts.vae = _model(folder / "vae", diffusers, allow_pickle=allow_pickle, dtype=dtype, what="vae")
        if (folder / "text_encoder").is_dir():
            parts.text_encoder = _model(
                folder / "text_encoder",
                transformers,
                allow_pickle=allow_pickle,
                dtype=dtype,
                what="text encoder",
            )
            if not (folder / "tokenizer").is_dir():
                raise DataError(
                    f"from_diffusers: {str(folder)!r} has a text_encoder/ but no tokenizer/ subfolder"
                )
            try:
                parts.tokenizer = transformers.AutoTokenizer.from_pretrained(
                    str(folder / "tokenizer"), local_files_only=True
                )
            except (OSError, ValueError, KeyError, TypeError) as e:
                first = first_line(e) or type(e).__name__
                raise DataError(
                    f"from_diffusers: cannot load the tokenizer in {str(folder)!r}: {first}"
                ) from None
        return parts
    if (folder / "config.json").exists():
        unet = _model(folder, diffusers, allow_pickle=allow_pickle, dtype=dtype, what="model")
        sch = None
        for cand in (folder, folder.parent / "scheduler"):
            if (cand / "scheduler_config.json").exists():
                sch = _scheduler(cand, diffusers)
                break
        return Parts(unet, sch, meta=meta, path=folder)
    raise DataError(
        f"from_diffusers: {str(folder)!r} is not a diffusers folder (no config.json, no unet/ subfolder)"
    )


def check_scheduler(scheduler: Any, name: str) -> tuple[Any, str]:
    """``(alphas_cumprod, diffusers prediction_type)`` of a scheduler, or a :class:`FactorError`."""
    if scheduler is None:
        raise FactorError(
            f"factor {name!r}: no scheduler found; pass scheduler= (e.g. diffusers.DDPMScheduler(...))"
        )
    abar = getattr(scheduler, "alphas_cumprod", None)
    if abar is None:
        raise FactorError(
            f"factor {name!r}: scheduler {type(scheduler).__name__} has no alphas_cumprod (not a discrete "
            "variance-preserving schedule)"
        )
    config = getattr(scheduler, "config", {}) or {}
    return abar, str(config.get("prediction_type", "epsilon"))
