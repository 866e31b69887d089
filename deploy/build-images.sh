#!/usr/bin/env bash
# Build every image docker-compose.yml uses, with no image registry: a Debian base made
# by debootstrap from Debian's packages and `docker import`ed (cached: built once per
# machine unless VOLSNAP_REBUILD_BASE=1), PostgreSQL, Prometheus and Alertmanager from
# Debian packages on top of it, and the volsnap image from binaries built on this host
# (the Dockerfile's `prebuilt` target; the runtime stage is the same as the multi-stage
# build's).
#
#   deploy/build-images.sh            # debug binaries from target/debug (CI)
#   PROFILE=release deploy/build-images.sh
#
# Needs: debootstrap, a Docker engine, the binaries built (`cargo build --bins`).
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${VOLSNAP_BASE_IMAGE:-volsnap-base:bookworm}
SUITE=${VOLSNAP_DEBIAN_SUITE:-bookworm}
MIRROR=${VOLSNAP_DEBIAN_MIRROR:-http://deb.debian.org/debian}
PROFILE=${PROFILE:-debug}
TAG=${VOLSNAP_IMAGE_TAG:-local}

if [ "${VOLSNAP_REBUILD_BASE:-0}" = 1 ] || ! docker image inspect "$BASE" >/dev/null 2>&1; then
  echo "== debootstrap $SUITE -> $BASE" >&2
  root=$(mktemp -d /tmp/volsnap-base.XXXXXX)
  trap 'rm -rf "$root"' EXIT
  debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >/tmp/volsnap-debootstrap.log 2>&1 \
    || { tail -20 /tmp/volsnap-debootstrap.log >&2; exit 1; }
  # Small and quiet, like the usual slim images.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  printf 'APT::Install-Recommends "false";\n' >"$root/etc/apt/apt.conf.d/90volsnap-norecommends"
  tar -C "$root" -c . | docker import - "$BASE" >/dev/null
  rm -rf "$root"
  trap - EXIT
else
  echo "== $BASE is cached" >&2
fi

build() { # name dockerfile-dir [docker build args...]
  local name=$1 dir=$2; shift 2
  echo "== build $name" >&2
  docker build --network host -q --build-arg "BASE_IMAGE=$BASE" -t "$name" "$@" "$dir" >/dev/null
}
build "volsnap-postgres:$TAG" deploy/images/postgres
build "volsnap-prometheus:$TAG" deploy/images/prometheus
build "volsnap-alertmanager:$TAG" deploy/images/alertmanager

# The volsnap image from host-built binaries: a small context with just them.
ctx=$(mktemp -d /tmp/volsnap-ctx.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/prebuilt"
for b in volsnap-api volsnap-worker; do
  [ -x "target/$PROFILE/$b" ] || { echo "target/$PROFILE/$b is missing: cargo build --bins first" >&2; exit 1; }
  cp "target/$PROFILE/$b" "$ctx/prebuilt/"
done
cp Dockerfile "$ctx/"
build "volsnap:$TAG" "$ctx" --target prebuilt
echo "== images ready: volsnap:$TAG volsnap-postgres:$TAG volsnap-prometheus:$TAG volsnap-alertmanager:$TAG (base $BASE)" >&2
