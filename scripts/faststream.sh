#!/usr/bin/env bash
# FastStream 0.7.8 from PyPI in a virtualenv, for the interop tests (brook_runtime::interop).
# Installed once and reused; prints nothing when it is already there.
set -euo pipefail
venv="${BROOK_FASTSTREAM_VENV:-$HOME/.cache/brook-ci/faststream-venv}"
version=0.7.8
if "$venv/bin/python" -c "import sys, importlib.metadata as m; import aio_pika, nats, redis; sys.exit(m.version('faststream') != '$version')" 2>/dev/null; then
  exit 0
fi
echo "installing FastStream $version into $venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "faststream[rabbit,nats,redis]==$version"
"$venv/bin/python" -c "import importlib.metadata as m; print('FastStream', m.version('faststream'))"
