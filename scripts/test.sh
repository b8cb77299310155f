#!/usr/bin/env bash
# weft's test command: installs what the tests need on a Debian machine, then runs the format and
# lint checks, every unit and integration test, and a bounded fuzz run.
# Needs root (network namespaces, TUN devices). Missing prerequisites fail; nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/prereqs.sh
weft_require_root scripts/test.sh
weft_apt_install "${WEFT_BUILD_PACKAGES[@]}" iproute2 iputils-ping ethtool procps etcd-server etcd-client openssl \
  nftables iptables containernetworking-plugins util-linux
weft_find_cargo

[ -c /dev/net/tun ] || { echo "scripts/test.sh: /dev/net/tun is missing (modprobe tun)" >&2; exit 1; }
ip netns add weft-precheck-$$ && ip netns del weft-precheck-$$ || { echo "scripts/test.sh: cannot create network namespaces" >&2; exit 1; }

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --locked --all-targets -- -D warnings
echo "== cargo test (unit + integration in network namespaces)"
cargo test --locked --no-fail-fast --all-targets

echo "== fuzz (bounded)"
FUZZ_SECONDS="${FUZZ_SECONDS:-20}"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --quiet
fi
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
for target in proto_parsers decapsulate encapsulate gso_gro flow_runs; do
  # Run over a copy of the committed seeds so that the tree stays clean.
  work=$(mktemp -d)
  cp fuzz/corpus/"$target"/* "$work"/
  cargo +nightly fuzz run --fuzz-dir fuzz "$target" "$work" -- -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 2>&1 | tail -n 3
  rm -rf "$work"
done

leftover=$(ip netns list | grep -c '^weft-' || true)
if [ "$leftover" -ne 0 ]; then
  echo "scripts/test.sh: $leftover weft network namespaces were left behind" >&2
  ip netns list >&2
  exit 1
fi
echo "== all checks passed"
