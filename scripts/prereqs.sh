# Sourced by scripts/test.sh and scripts/lab.sh: checks for root, installs Debian packages by
# name, and finds cargo. Works as root and under sudo (whose secure_path drops ~/.cargo/bin).

# weft_require_root SCRIPT: the data paths need network namespaces and TUN devices.
weft_require_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "$1: needs root (network namespaces, /dev/net/tun): run it as root, or with sudo" >&2
    exit 1
  fi
}

# weft_apt_install PACKAGE...: installs the packages that are missing, after `apt-get update`.
weft_apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  echo "== installing ${missing[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# What building weft needs: a C compiler for ring, and protoc with the well-known .proto files
# (google/protobuf/*.proto, in libprotobuf-dev) for etcd-client's generated gRPC code.
WEFT_BUILD_PACKAGES=(build-essential pkg-config protobuf-compiler libprotobuf-dev)

# weft_find_cargo: puts rustup's cargo on PATH when sudo's PATH lacks it.
weft_find_cargo() {
  if ! command -v cargo >/dev/null 2>&1; then
    for d in "${CARGO_HOME:-$HOME/.cargo}/bin" /root/.cargo/bin; do
      [ -x "$d/cargo" ] && PATH="$d:$PATH" && break
    done
  fi
  command -v cargo >/dev/null 2>&1 || {
    echo "cargo not found: install Rust with rustup (https://rustup.rs) as root" >&2
    exit 1
  }
  export PATH
}
