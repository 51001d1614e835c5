#!/bin/sh
# Build a Python 3.11 base image's root file system from Debian bookworm packages with debootstrap,
# for machines that cannot pull python:3.11-slim. Writes OUT (a tar for `docker import`); building
# takes minutes, so docker/check.sh keeps it in its cache directory and reuses it.
# usage: docker/base.sh OUT.tar   (as root)
set -eu
out=${1:?usage: docker/base.sh OUT.tar}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
root=$(mktemp -d /tmp/jobstore-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" "$mirror"
# Trust this machine's extra CAs too, so pip inside the build reaches PyPI through the same proxy.
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    chroot "$root" update-ca-certificates >/dev/null
fi
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
mkdir -p "$(dirname "$out")"
tar -C "$root" --numeric-owner -cf "$out.part" .
mv "$out.part" "$out"
echo "base: $out ($(du -h "$out" | cut -f1)), $(chroot "$root" python3 --version)"
