#!/bin/sh
# Installs the Python SDK as a user would into a fresh venv VENV_DIR: Debian's python3 with
# --system-site-packages (grpcio, protobuf, pytest), `pip install --no-build-isolation
# --no-index` of a copy of sdk/python (pip must not write build/ and egg-info into the tree).
# Usage: make_venv.sh VENV_DIR
set -eu
venv=$1
sdk=$(cd "$(dirname "$0")/.." && pwd)
python=/usr/bin/python3   # Debian's python3-grpcio / python3-protobuf live in its dist-packages
rm -rf "$venv"
"$python" -m venv --system-site-packages "$venv"
mkdir -p "$venv/src" && cp -r "$sdk" "$venv/src/python"
LATENTSERVE_PROTO_DIR="$sdk/../../proto" "$venv/bin/pip" install --quiet --no-build-isolation --no-index \
  "$venv/src/python"
