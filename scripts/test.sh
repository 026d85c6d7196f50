#!/usr/bin/env bash
# README command 2: set up the venv if needed, lint (ruff, import layering), and run the test suite (slow tests
# excluded; add `-m slow` to run only those). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .  # one formatting (ruff's, line length 120)
.venv/bin/lint-imports --no-cache  # the one-way layering of pyproject.toml [tool.importlinter]
exec .venv/bin/python -m pytest -m "not slow" "$@"
