#!/usr/bin/env bash
# The MCP Inspector (npm's @modelcontextprotocol/inspector), a real MCP client nobody here
# wrote, with the Node 22 it needs (npm's `node` package), installed once from the npm
# registry into ~/.cache/deskhand/mcp-inspector/VERSION/. Prints that folder;
# tests/mcp_inspector.rs runs its CLI against `deskhand mcp`. Needs npm (Debian: nodejs npm).
set -euo pipefail
version="${INSPECTOR_VERSION:-2.12.0}"
dir="${XDG_CACHE_HOME:-$HOME/.cache}/deskhand/mcp-inspector/$version"
if [ ! -f "$dir/.installed" ]; then
  command -v npm >/dev/null || { echo "npm not found; on Debian: apt-get install nodejs npm" >&2; exit 1; }
  mkdir -p "$dir"
  npm install --prefix "$dir" --no-audit --no-fund --loglevel=error \
    "node@22" "@modelcontextprotocol/inspector@$version" >&2
  "$dir/node_modules/.bin/node" --version >&2
  touch "$dir/.installed"
fi
echo "$dir"
