"""The ``probcomp`` command line.

``probcomp demo [--json] [--png PATH] [--analytic]`` runs the main job;
``probcomp models list|show NAME`` describes the shipped zoo.  Errors are one line
on stderr with exit code 2 for bad input; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .errors import ProbcompError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="probcomp", description="Compositional generative inference.")
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


if __name__ == "__main__":
    sys.exit(main())
