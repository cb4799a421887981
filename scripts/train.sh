#!/usr/bin/env bash
# Set up (venv, install, data) and run `python -m ardrop.train` with any Hydra overrides.
# No arguments: the default job, a 784-1024-1024-10 MLP on MNIST with row dropout 0.5.
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec "$PY" -m ardrop.train "$@"
