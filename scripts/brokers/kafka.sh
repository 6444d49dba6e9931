#!/usr/bin/env bash
# Kafka protocol on 127.0.0.1:9092, served by tansu (a Kafka-compatible broker from crates.io)
# with in-memory storage: start it if it is not running; build it once if it is missing (about
# 10-15 minutes on 2 cores; the binary stays in ~/.cargo/bin and is reused).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
# Build tools for librdkafka, which rdkafka-sys compiles from source (./configure + make; the
# crate links the system OpenSSL and zlib: brokers/kafka/Cargo.toml, features "ssl", "libz").
need make make
need cc gcc
need c++ g++
need perl perl
need pkg-config pkg-config
need_package libssl-dev
need_package zlib1g-dev
port_open 9092 && exit 0
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v tansu >/dev/null 2>&1; then
  echo "building tansu (once)" >&2
  cargo install tansu --locked --features dynostore >&2
fi
log_dir="${TMPDIR:-/tmp}/brook-tansu"
mkdir -p "$log_dir"
nohup tansu broker \
  --listener-url tcp://127.0.0.1:9092 \
  --advertised-listener-url tcp://127.0.0.1:9092 \
  --storage-engine memory://tansu/ >"$log_dir/tansu.log" 2>&1 &
wait_port 9092 "Kafka (tansu)" 60
