#!/usr/bin/env bash
# Set up (venv, install, data) and run the test suite; extra arguments go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec "$PY" -m pytest "$@"
