#!/usr/bin/env bash
# The whole test suite, on a fresh machine or a used one: sets up what it needs, then runs pytest.
# Guests run under TCG where KVM cannot run them; nothing is skipped on a machine like CI's.
# Every unit-tier test that uses a database runs on SQLite and on PostgreSQL 15: the tests start a
# private cluster themselves (tests/pg.py) and remove it at the end. `-k sqlite` / `-k postgresql`
# run one backend.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export FLEXVM_FORBID_SKIPS=1
exec .venv/bin/python -m pytest -ra --strict-markers --durations=30 "$@"
