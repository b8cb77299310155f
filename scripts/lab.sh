#!/usr/bin/env bash
# weft's main job: build weft and run the measuring lab (needs root). Arguments go to `weft lab`.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/lab.sh: the lab needs root (network namespaces, TUN); run: sudo scripts/lab.sh" >&2
  exit 1
fi
if ! command -v ip >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get update -qq && apt-get install -y -qq --no-install-recommends iproute2 procps >/dev/null
fi
cargo build --release --quiet
exec target/release/weft lab "$@"
