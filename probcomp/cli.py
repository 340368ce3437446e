"""The ``probcomp`` command line.

``probcomp demo [--json] [--png PATH] [--analytic]`` runs the main job;
``probcomp run SCENE.py --engine annealed-hmc --samples 2000 --out result.nc`` runs an
inference query on a scene file (:mod:`probcomp.query`; NetCDF via arviz, a PNG
summary, ``--json`` summary statistics, a progress bar over levels);
``probcomp models list|show NAME`` describes the shipped zoo; ``probcomp bench NAME
[ARGS...]`` runs ``benchmarks/NAME.py``.  Errors are one line on stderr with exit code 2
for bad input; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from .errors import ProbcompError, first_line


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors as one line (exit code 2), like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="probcomp", description="Compositional generative inference.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="compose two 2-D factors and score the samples against the exact product")
    d.add_argument("--samples", type=int, default=1000, help="particles per method (default 1000)")
    d.add_argument("--steps", type=int, default=200, help="reverse-diffusion steps (default 200)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--png", default="probcomp-demo.png", help="where to write the plot ('' for none)")
    d.add_argument("--json", action="store_true", help="print the metrics as JSON")
    d.add_argument(
        "--analytic", action="store_true", help="analytic factors instead of the learned zoo models"
    )
    r = sub.add_parser("run", help="run an inference engine on a scene file (defines `scene` or `program`)")
    r.add_argument("scene", help="a Python file defining `scene` or `program`")
    r.add_argument(
        "--engine",
        default="annealed-hmc",
        help="a registered engine: ddpm, ddim, annealed-{ula,mala,uhmc,hmc}, per-step-em, or your own "
        "(probcomp.inference.register); default annealed-hmc",
    )
    r.add_argument("--samples", type=int, default=1000)
    r.add_argument("--steps", type=int, default=100, help="noise levels (default 100)")
    r.add_argument("--steps-per-level", type=int, default=10, help="MCMC transitions per level (annealed)")
    r.add_argument("--chains", type=int, default=1, help="arviz chains (the samples are split among them)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--out", help="write the result here as arviz NetCDF (.nc)")
    r.add_argument("--png", help="write a summary plot here")
    r.add_argument("--json", action="store_true", help="print summary statistics as JSON")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument(
        "--over",
        metavar="DATA",
        help="run the scene file's `scene_for(observation)` on every observation of DATA (.pt, .npy, "
        ".safetensors) as Ray tasks (probcomp.batch); prints one JSON record per observation",
    )
    r.add_argument("--log", help="with --over: JSONL record file, appended as items finish; a rerun resumes")
    r.add_argument("--workers", type=int, help="with --over: tasks at once (default: this machine's cores)")
    r.add_argument("--address", help="with --over: a Ray cluster (default RAY_ADDRESS or a local instance)")
    b = sub.add_parser("bench", help="run a benchmark script from benchmarks/ (printing its JSON)")
    b.add_argument("name", help="e.g. product2d, panorama, reverse_diffusion")
    b.add_argument("args", nargs=argparse.REMAINDER, help="passed to the script (e.g. --quick --json)")
    m = sub.add_parser("models", help="the shipped model zoo")
    msub = m.add_subparsers(dest="models_command", required=True)
    ml = msub.add_parser("list", help="shipped models with their training and quality numbers")
    ml.add_argument("--json", action="store_true")
    msub.add_parser("show", help="one model's full config").add_argument("name")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import format_table, run_demo

            if args.samples < 2 or args.steps < 1:
                raise ProbcompError("--samples must be >= 2 and --steps >= 1")
            out = run_demo(args.samples, args.steps, args.seed, args.png or None, analytic=args.analytic)
            print(json.dumps(out, indent=2) if args.json else format_table(out))
        elif args.command == "run":
            return _run(args)
        elif args.command == "bench":
            return _bench(args.name, args.args)
        elif args.command == "models":
            from probcomp.models import zoo

            if args.models_command == "list":
                rows = zoo.list_models()
                print(json.dumps(rows, indent=1) if args.json else zoo.format_rows(rows))
            else:
                cfg = zoo.read_config(args.name)
                cfg.pop("_path", None)
                print(json.dumps(cfg, indent=1))
        return 0
    except ProbcompError as e:
        if args.debug:
            raise
        print(f"probcomp: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("probcomp: interrupted", file=sys.stderr)
        return 130


FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")
NETCDF_SUFFIXES = (".nc", ".nc4", ".netcdf")


def check_output(path: str, option: str, suffixes: Sequence[str]) -> Path:
    """Refuse, before any work, an output path with the wrong suffix or that cannot be written."""
    p = Path(path)
    if p.suffix.lower() not in suffixes:
        raise ProbcompError(
            f"{option} {path!r} must end in {' or '.join(suffixes)}, got {p.suffix or 'no suffix'!r}"
        )
    if p.is_dir():
        raise ProbcompError(f"{option} {path!r} is a directory")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise ProbcompError(f"{option} {path!r}: the folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise ProbcompError(f"{option} {path!r} cannot be written (permission denied)")
    return p


def _run(args: argparse.Namespace) -> int:
    from . import query

    if args.over:
        return _run_over(args)
    if args.log or args.workers or args.address:
        raise ProbcompError("--log, --workers and --address go with --over DATA")
    if args.out:
        check_output(args.out, "--out", NETCDF_SUFFIXES)
    if args.png:
        check_output(args.png, "--png", FIGURE_SUFFIXES)
    res = query.run_query(
        args.scene,
        args.engine,
        args.samples,
        steps=args.steps,
        steps_per_level=args.steps_per_level,
        seed=args.seed,
        chains=args.chains,
        progress=not args.no_progress and not args.json,
    )
    out = query.summary(res)
    failed: list[str] = []  # the run is done: write every output that can be written, then report the others
    if args.out and _write(failed, "--out", args.out, lambda: res.to_arviz().to_netcdf(args.out)):
        out["out"] = args.out
    if args.png and _write(
        failed, "--png", args.png, lambda: _save_figure(query.summary_figure(res), args.png)
    ):
        out["png"] = args.png
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        shown = ", ".join(f"{k} {tuple(v['shape'])}" for k, v in out["controls"].items())
        print(
            f"{out['engine']}: {out['samples']} samples of {shown}; NFE {out['nfe_total']}, "
            f"{out['wall_time_s']} s" + (f"; wrote {args.out}" if "out" in out else "")
        )
    if failed:
        print(f"probcomp: error: the run finished but could not write {'; '.join(failed)}", file=sys.stderr)
        return 2
    return 0


def _write(failed: list[str], option: str, path: str, write: Callable[[], Any]) -> bool:
    """Run ``write``; on failure note it in ``failed`` (one line) instead of losing the other outputs."""
    try:
        write()
    except Exception as e:
        failed.append(f"{option} {path!r}: {type(e).__name__}: {first_line(e)}")
        return False
    return True


def _save_figure(fig: Any, path: str) -> bool:
    if fig is None:
        return False
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _run_over(args: argparse.Namespace) -> int:
    """``probcomp run SCENE.py --over DATA``: one engine run per observation (:mod:`probcomp.batch`)."""
    from . import batch

    if args.out or args.png:
        raise ProbcompError("--out and --png are for one run; with --over the records go to --log")
    if args.workers is not None and args.workers < 1:
        raise ProbcompError(f"--workers must be >= 1, got {args.workers}")
    out = batch.run_scene_file(
        args.scene,
        args.over,
        args.engine,
        samples=args.samples,
        steps=args.steps,
        steps_per_level=args.steps_per_level,
        seed=args.seed,
        log=args.log,
        workers=args.workers,
        address=args.address,
        progress=not args.no_progress and not args.json,
    )
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"{out['done']} of {out['items']} observations in {out['wall_time_s']} s")
    return 0


def _bench(name: str, extra: list[str]) -> int:
    """Run ``benchmarks/NAME.py`` of the source checkout: the one this package was installed from
    (editable install) or the one in the current directory (any install)."""
    places = [Path(__file__).resolve().parents[1] / "benchmarks", Path.cwd() / "benchmarks"]
    bench = next((b for b in places if b.is_dir()), None)
    if bench is None:
        raise ProbcompError(
            "benchmarks are scripts of the source checkout and none was found beside the package or in "
            "the current directory; run `probcomp bench` from a probcomp checkout"
        )
    script = bench / f"{name}.py"
    if not script.is_file():
        known = sorted(q.stem for q in bench.glob("[!_]*.py"))
        raise ProbcompError(f"no benchmark {name!r} in {bench}; known: {known}")
    return subprocess.run([sys.executable, str(script), *extra], check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
