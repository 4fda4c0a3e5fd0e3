#!/usr/bin/env bash
# Install everything shelbyfs needs to build, test and run its demo on Debian 12.
set -euo pipefail

packages=(
  meson ninja-build pkg-config g++
  libfuse3-dev fuse3 libcurl4-openssl-dev libarchive-dev libxxhash-dev xxhash
  nlohmann-json3-dev libtomlplusplus-dev doctest-dev
  nginx-light curl attr
  python3 python3-numpy python3-pil python3-torch python3-torchvision
  dataset-fashion-mnist
)

if dpkg-query -W -f='${Status}\n' "${packages[@]}" 2>/dev/null | grep -vq "install ok installed" ||
   [ "$(dpkg-query -W -f='${Status}\n' "${packages[@]}" 2>/dev/null | wc -l)" -ne "${#packages[@]}" ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "deps: installing ${#packages[@]} Debian packages" >&2
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${packages[@]}"
else
  echo "deps: all Debian packages already installed" >&2
fi
