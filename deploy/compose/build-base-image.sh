#!/usr/bin/env bash
# Builds a local Debian base image without any container registry:
# debootstrap a minimal Debian from a package mirror, then `docker import`.
# The compose testbed's image takes it as its BASE_IMAGE build argument.
#
# usage: deploy/compose/build-base-image.sh [TAG]     (as root)
#   TAG     image tag (default convoke-base:bookworm)
#   env MIRROR  Debian mirror (default http://deb.debian.org/debian)
#   env SUITE   Debian suite (default bookworm, matching the host's glibc,
#               since the image runs the convoke binary built on the host)
# Skips the work when the tag exists already (FORCE=1 rebuilds).
set -euo pipefail
tag=${1:-convoke-base:bookworm}
mirror=${MIRROR:-http://deb.debian.org/debian}
suite=${SUITE:-bookworm}
case ${1:-} in -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;; esac
command -v docker >/dev/null || { echo "build-base-image: docker not found" >&2; exit 2; }
if [ "${FORCE:-0}" != 1 ] && docker image inspect "$tag" >/dev/null 2>&1; then
  echo "build-base-image: $tag exists (FORCE=1 rebuilds)"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "build-base-image: debootstrap not found (apt-get install debootstrap)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "build-base-image: debootstrap needs root" >&2; exit 2; }
rootfs=$(mktemp -d /tmp/convoke-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
echo "build-base-image: debootstrap $suite from $mirror (a few minutes)"
# What the testbed's containers need: NAT rules, addresses and routes.
debootstrap --variant=minbase --include=iproute2,nftables,conntrack,procps \
  "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || { tail -n 30 "$rootfs.log" >&2; rm -f "$rootfs.log"; exit 1; }
rm -f "$rootfs.log"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | docker import -c 'CMD ["/bin/bash"]' - "$tag" >/dev/null
echo "build-base-image: built $tag ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MiB", $1/1048576}'))"
