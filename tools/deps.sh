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
  # tools/testlib/s3.py: the SigV4-verifying proxy in front of s3rver.
  python3-botocore
  python3 python3-numpy python3-pil python3-torch python3-torchvision
  dataset-fashion-mnist
  # tools/bench.py: the "remote store" nginx (ngx.sleep via the Lua module, which
  # needs NDK), WebDAV PROPFIND for rclone's webdav backend, and the rclone peer.
  libnginx-mod-http-ndk libnginx-mod-http-lua libnginx-mod-http-dav-ext rclone
)

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
node_dir="$here/node"

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
updated=0
apt_install() {
  if [ "$updated" -eq 0 ]; then
    $sudo apt-get update -qq >/dev/null
    updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

changed=0
if [ "${#missing[@]}" -gt 0 ]; then
  echo "deps: installing ${#missing[@]} Debian packages: ${missing[*]}" >&2
  apt_install "${missing[@]}"
  changed=1
fi

# Node + npm for s3rver (the S3 stand-in of tools/testlib/s3.py). Not in the
# dpkg check above: a nodesource nodejs ships npm itself and conflicts with
# Debian's npm package, so only install when the commands are absent.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "deps: installing nodejs npm" >&2
  apt_install nodejs npm
  changed=1
fi

# s3rver, pinned by tools/node/package-lock.json.
if [ ! -x "$node_dir/node_modules/.bin/s3rver" ]; then
  echo "deps: npm ci in $node_dir (s3rver)" >&2
  npm ci --no-audit --no-fund --loglevel=error --prefix "$node_dir" >/dev/null
  changed=1
fi

if [ "$changed" -eq 0 ]; then
  echo "deps: all ${#packages[@]} Debian packages, node and s3rver already installed" >&2
else
  echo "deps: done" >&2
fi
