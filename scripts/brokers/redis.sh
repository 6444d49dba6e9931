#!/usr/bin/env bash
# Redis on 127.0.0.1:6379: start it if it is not running, install it on a bare machine.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
port_open 6379 && exit 0
need redis-server redis-server
redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
wait_port 6379 Redis 30
