#!/usr/bin/env bash
# One entry point for a fresh machine: sets up a project-local virtual environment
# (unless one is active), installs probcomp with its pinned dependencies, then runs
#   ./dev.sh demo  [probcomp demo options]   the main job
#   ./dev.sh test  [pytest options]          the test suite (what CI runs)
#   ./dev.sh bench NAME [options]            a script from benchmarks/
#   ./dev.sh lint                            ruff
set -euo pipefail
cd "$(dirname "$0")"

if [ -n "${VIRTUAL_ENV:-}" ]; then
  PY="$VIRTUAL_ENV/bin/python"
else
  [ -x .venv/bin/python ] || python3 -m venv .venv
  PY=.venv/bin/python
fi
stamp="$("$PY" -c 'import sys; print(sys.prefix)')/.probcomp-installed"
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "dev.sh: installing probcomp and its pinned dependencies into $(dirname "$stamp")" >&2
  log="$(mktemp)"
  if ! "$PY" -m pip install --quiet -e ".[test]" >"$log" 2>&1; then
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
  bench) name="$1"; shift; exec "$PY" "benchmarks/$name.py" "$@" ;;
  lint) exec "$PY" -m ruff check . ;;
  *) echo "usage: ./dev.sh demo|test|bench NAME|lint [args]" >&2; exit 2 ;;
esac
