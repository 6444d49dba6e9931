#!/usr/bin/env bash
# Mosquitto on 127.0.0.1:1883: start it if it is not running, install it on a bare machine.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
port_open 1883 && exit 0
need mosquitto mosquitto
mkdir -p /run/mosquitto && chown mosquitto: /run/mosquitto 2>/dev/null || true
mosquitto -d -c /etc/mosquitto/mosquitto.conf
wait_port 1883 Mosquitto 30
