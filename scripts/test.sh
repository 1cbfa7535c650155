#!/usr/bin/env bash
# The whole test suite, on a fresh machine or a used one: sets up what it needs, then runs pytest.
# Guests run under TCG where KVM cannot run them; nothing is skipped on a machine like CI's.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export FLEXVM_FORBID_SKIPS=1
exec .venv/bin/python -m pytest -ra --strict-markers "$@"
