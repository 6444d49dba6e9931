#!/usr/bin/env bash
# FastStream 0.7.8 from PyPI in a virtualenv, for the interop tests (brook_runtime::interop),
# with its `otel` extra and a pinned OpenTelemetry SDK (the trace-context interop tests).
# Installed once and reused; prints nothing when it is already there.
set -euo pipefail
venv="${BROOK_FASTSTREAM_VENV:-$HOME/.cache/brook-ci/faststream-venv}"
version=0.7.8
otel=1.45.2
if "$venv/bin/python" -c "import sys, importlib.metadata as m; import aio_pika, nats, redis, opentelemetry.sdk.trace; sys.exit(m.version('faststream') != '$version' or m.version('opentelemetry-sdk') != '$otel')" 2>/dev/null; then
  exit 0
fi
echo "installing FastStream $version into $venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check \
  "faststream[rabbit,nats,redis,otel]==$version" "opentelemetry-api==$otel" "opentelemetry-sdk==$otel"
"$venv/bin/python" -c "import importlib.metadata as m; print('FastStream', m.version('faststream'), '/ opentelemetry-sdk', m.version('opentelemetry-sdk'))"
