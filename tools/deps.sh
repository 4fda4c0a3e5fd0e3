#!/usr/bin/env bash
# Install everything shelbyfs needs to build, test, run its demo and its
# benchmark (tools/bench.py) on Debian 12. Idempotent: when every package is
# already installed it only prints one line.
set -euo pipefail

packages=(
  meson ninja-build pkg-config g++
  libfuse3-dev fuse3 libcurl4-openssl-dev libarchive-dev libxxhash-dev xxhash
  nlohmann-json3-dev libtomlplusplus-dev doctest-dev
  nginx-light curl attr
  python3 python3-numpy python3-pil python3-torch python3-torchvision
  dataset-fashion-mnist
  # tools/bench.py: the "remote store" nginx (ngx.sleep via the Lua module, which
  # needs NDK), WebDAV PROPFIND for rclone's webdav backend, and the rclone peer.
  libnginx-mod-http-ndk libnginx-mod-http-lua libnginx-mod-http-dav-ext rclone
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "deps: all ${#packages[@]} Debian packages already installed" >&2
  exit 0
fi

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "deps: installing ${#missing[@]} Debian packages: ${missing[*]}" >&2
$sudo apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
echo "deps: done" >&2
