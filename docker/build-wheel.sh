#!/bin/sh
# Runs inside `docker build` (docker/Dockerfile): build the project's wheel into $1.
set -eu
if [ -f /run/secrets/pip_cert ]; then
  export PIP_CERT=/run/secrets/pip_cert
fi
if [ -z "${PIP_INDEX_URL:-}" ]; then
  unset PIP_INDEX_URL
fi
python3 -m venv /tmp/build-venv
/tmp/build-venv/bin/pip wheel --no-cache-dir --no-deps --wheel-dir "$1" .
rm -rf /tmp/build-venv
