#!/usr/bin/env bash
# weft's main job: installs what building and running the lab needs on a Debian machine, builds
# weft and runs the measuring lab (as root). Arguments go to `weft lab` (e.g. --quick).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/prereqs.sh
weft_require_root scripts/lab.sh
# iproute2 and procps for the namespaces and CPU figures; etcd for `weft lab --etcd`.
weft_apt_install "${WEFT_BUILD_PACKAGES[@]}" iproute2 procps etcd-server etcd-client
weft_find_cargo
echo "== cargo build --release"
cargo build --release --locked --quiet
exec target/release/weft lab "$@"
