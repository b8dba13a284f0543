#!/bin/sh
# The Python SDK as a user installs it, then its tests: a venv on Debian's python3 with
# --system-site-packages (grpcio, protobuf, pytest), `pip install --no-build-isolation` of
# sdk/python (no network: --no-index), pytest against a real `serve`.
# Usage: ci.sh LATENTSERVE_BIN VENV_DIR
set -eu
bin=$1
venv=$2
sdk=$(cd "$(dirname "$0")/.." && pwd)
python=/usr/bin/python3   # Debian's python3-grpcio / python3-protobuf live in its dist-packages
rm -rf "$venv"
"$python" -m venv --system-site-packages "$venv"
# A copy: pip must not write its build/ and egg-info into the source tree.
rm -rf "$venv/src" && mkdir -p "$venv/src" && cp -r "$sdk" "$venv/src/python"
LATENTSERVE_PROTO_DIR="$sdk/../../proto" "$venv/bin/pip" install --quiet --no-build-isolation --no-index \
  "$venv/src/python"
cd "$venv"  # import the installed package, not the source folder
LATENTSERVE_BIN=$bin exec "$venv/bin/python" -m pytest -q -p no:cacheprovider "$sdk/tests"
