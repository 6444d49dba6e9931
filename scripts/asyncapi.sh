#!/usr/bin/env bash
# Tools for the AsyncAPI tests: the official parser (@asyncapi/parser from the npm registry, run
# with Node.js) and Debian's Chromium (the HTML view is rendered headless). Installed once and
# reused; prints nothing when both are there.
set -euo pipefail
dir="${BROOK_ASYNCAPI_NODE:-$HOME/.cache/brook-ci/asyncapi-node}"
parser=3.6.3
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null || true
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
}

if ! command -v node >/dev/null 2>&1; then
  echo "installing Node.js"
  apt_install nodejs npm
fi
installed=$(node -p "try { require('$dir/node_modules/@asyncapi/parser/package.json').version } catch { '' }" 2>/dev/null || true)
if [ "$installed" != "$parser" ]; then
  echo "installing @asyncapi/parser $parser into $dir"
  mkdir -p "$dir"
  [ -f "$dir/package.json" ] || echo '{"name":"brook-asyncapi-tools","private":true}' > "$dir/package.json"
  (cd "$dir" && npm install --no-audit --no-fund --ignore-scripts --loglevel=error "@asyncapi/parser@$parser")
fi
if ! command -v chromium >/dev/null 2>&1; then
  echo "installing chromium"
  apt_install chromium
fi
