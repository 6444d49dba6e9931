# Helpers for the broker start scripts: sourced, not run.

# port_open PORT: something accepts TCP connections on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_port PORT NAME [SECONDS]: wait until the port opens, or fail naming the broker.
wait_port() {
  local port=$1 name=$2 limit=${3:-90} i
  for ((i = 0; i < limit * 4; i++)); do
    port_open "$port" && return 0
    sleep 0.25
  done
  echo "error: $name did not open 127.0.0.1:$port within ${limit}s" >&2
  return 1
}

# apt_install PACKAGE: install a Debian package (apt-get update once per run).
apt_install() {
  echo "installing $1" >&2
  if [ -z "${BROOK_APT_UPDATED:-}" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    export BROOK_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >&2
}

# need BINARY PACKAGE: install the Debian package if the binary is missing.
need() {
  command -v "$1" >/dev/null 2>&1 && return 0
  [ -x "/usr/sbin/$1" ] && return 0
  apt_install "$2"
}

# need_package PACKAGE: install a Debian package that has no binary to look for (a library).
need_package() {
  dpkg -s "$1" >/dev/null 2>&1 || apt_install "$1"
}
