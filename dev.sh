#!/usr/bin/env bash
# One entry point for a fresh machine: sets up a project-local virtual environment
# (unless one is active), installs probcomp with the exact dependency versions of
# constraints.txt (setup.cfg keeps compatible ranges), then runs
#   ./dev.sh demo  [probcomp demo options]   the main job
#   ./dev.sh test  [pytest options]          the test suite (what CI runs; it builds the docs too)
#   ./dev.sh docs  [sphinx options]          the documentation site, warnings as errors, into docs/_build/html
#   ./dev.sh bench NAME [options]            a script from benchmarks/
#   ./dev.sh lint                            ruff, then pyright (basic) on the package when node and npm exist
set -euo pipefail
cd "$(dirname "$0")"

if [ -n "${VIRTUAL_ENV:-}" ]; then
  PY="$VIRTUAL_ENV/bin/python"
else
  [ -x .venv/bin/python ] || python3 -m venv .venv
  PY=.venv/bin/python
fi
stamp="$("$PY" -c 'import sys; print(sys.prefix)')/.probcomp-installed"
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ] \
  || [ constraints.txt -nt "$stamp" ]; then
  echo "dev.sh: installing probcomp and its pinned dependencies into $(dirname "$stamp")" >&2
  log="$(mktemp)"
  if ! "$PY" -m pip install --quiet -c constraints.txt -e ".[test,docs,diffusers,distributed]" >"$log" 2>&1; then
    cat "$log" >&2
    echo "dev.sh: installation failed (log above)" >&2
    exit 1
  fi
  rm -f "$log"
  "$PY" -c "import probcomp.inference, probcomp.models" && touch "$stamp"
fi

cmd="${1:-demo}"
shift || true
case "$cmd" in
  demo) exec "$PY" -m probcomp.cli demo "$@" ;;
  test) exec "$PY" -m pytest -n 2 -q "$@" ;;
  docs) exec "$PY" -m sphinx -W --keep-going -q -b html docs docs/_build/html "$@" ;;
  bench) name="$1"; shift; exec "$PY" "benchmarks/$name.py" "$@" ;;
  lint)
    "$PY" -m ruff check .
    PYRIGHT_VERSION=1.1.414  # from the npm registry, installed once into .tools/
    if command -v node >/dev/null && command -v npm >/dev/null; then
      pyright=".tools/pyright-$PYRIGHT_VERSION/node_modules/.bin/pyright"
      [ -x "$pyright" ] || npm install --silent --no-audit --no-fund --prefix ".tools/pyright-$PYRIGHT_VERSION" \
        "pyright@$PYRIGHT_VERSION" >&2
      "$PY" tools/typecheck_tree.py build/typecheck  # the installed layout: models/, inference/ inside probcomp/
      exec "$pyright" -p pyproject.toml --pythonpath "$PY"
    fi
    echo "dev.sh: node/npm not found; skipped pyright" >&2 ;;
  *) echo "usage: ./dev.sh demo|test|docs|bench NAME|lint [args]" >&2; exit 2 ;;
esac
