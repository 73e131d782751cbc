#!/usr/bin/env bash
# Install everything the tests need on a fresh machine, lint, then run the tests (CPU only).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system.sh
python3 -m pip install -q torch==2.13.0 -e ".[test,ray]"
python3 -m ruff check --quiet .  # the rules are pyproject.toml's [tool.ruff]
exec python3 -m pytest -q "$@"
