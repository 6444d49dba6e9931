#!/usr/bin/env bash
# Vendors the AsyncAPI project's own viewer (@asyncapi/react-component, its standalone browser
# bundle and stylesheet) into runtime/assets/asyncapi-react, where `AsyncApi::to_html` embeds
# it: the HTML view needs no network at run time. Run it to move to another pinned version;
# the files are committed, so building brook never needs npm.
set -euo pipefail
cd "$(dirname "$0")/.."
version=3.2.1
work="${BROOK_CACHE:-$HOME/.cache/brook-ci}/asyncapi-viewer-$version"
mkdir -p "$work"
if [ ! -f "$work/node_modules/@asyncapi/react-component/browser/standalone/index.js" ]; then
  (cd "$work" && echo '{"name":"brook-asyncapi-viewer","private":true}' > package.json \
    && npm install --no-audit --no-fund --ignore-scripts "@asyncapi/react-component@$version")
fi
pkg="$work/node_modules/@asyncapi/react-component"
dest=runtime/assets/asyncapi-react
mkdir -p "$dest"
cp "$pkg/browser/standalone/index.js" "$dest/standalone.js"
cp "$pkg/browser/standalone/index.js.LICENSE.txt" "$dest/standalone.js.LICENSE.txt"
cp "$pkg/styles/default.min.css" "$dest/default.min.css"
cp "$pkg/LICENSE" "$dest/LICENSE"
echo "$version" > "$dest/VERSION"
echo "vendored @asyncapi/react-component@$version into $dest"
