#!/bin/sh
# Runs inside `docker build` (docker/Dockerfile).
#   install-project.sh wheels DIR   install DIR's wheels (e.g. a CPU torch), if it holds any
#   install-project.sh project DIR  install the project's wheel from DIR with torch pinned to the one
#                                   installed by now, so pip never swaps in another (CUDA, GBs) torch
set -eu
mode=$1
dir=$2
# A TLS-inspecting proxy's CA bundle arrives as a build secret and never lands in a layer.
if [ -f /run/secrets/pip_cert ]; then
  export PIP_CERT=/run/secrets/pip_cert
fi
if [ -z "${PIP_INDEX_URL:-}" ]; then
  unset PIP_INDEX_URL
fi
if [ "$mode" = wheels ]; then
  for whl in "$dir"/*.whl; do
    if [ -f "$whl" ]; then
      pip install --find-links "$dir" "$whl"
    fi
  done
  exit 0
fi
# `pip freeze` prints a wheel installed from a file as `torch @ file://...`, so ask for the version.
pins=$(mktemp)
python - > "$pins" <<'PY'
import importlib.metadata as metadata
try:
    print("torch==" + metadata.version("torch"))
except metadata.PackageNotFoundError:
    pass
PY
pip install --constraint "$pins" "$dir"/*.whl
rm -f "$pins"
python -c "import launcher, train"
