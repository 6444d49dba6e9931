#!/usr/bin/env bash
# NATS with JetStream on 127.0.0.1:4222: start it if it is not running, install it on a bare
# machine.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
port_open 4222 && exit 0
need nats-server nats-server
mkdir -p /var/lib/nats-server /var/log
start-stop-daemon --start --oknodo --background --exec "$(command -v nats-server || echo /usr/sbin/nats-server)" -- \
  -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
wait_port 4222 NATS 30
