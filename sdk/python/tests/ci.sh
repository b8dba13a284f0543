#!/bin/sh
# The Python SDK installed as a user would (make_venv.sh), then its tests against a real
# `serve`. Usage: ci.sh LATENTSERVE_BIN VENV_DIR
set -eu
bin=$1
venv=$2
tests=$(cd "$(dirname "$0")" && pwd)
"$tests/make_venv.sh" "$venv"
cd "$venv"  # import the installed package, not the source folder
LATENTSERVE_BIN=$bin exec "$venv/bin/python" -m pytest -q -p no:cacheprovider "$tests"
