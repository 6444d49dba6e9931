#!/usr/bin/env bash
# RabbitMQ on 127.0.0.1:5672 (guest/guest): start it if it is not running, install it on a bare
# machine.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
port_open 5672 && exit 0
need rabbitmq-server rabbitmq-server
rabbitmq-server -detached
wait_port 5672 RabbitMQ 120
