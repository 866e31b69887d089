#!/usr/bin/env bash
# Build the local test image volsnap-test-busybox:latest (no registry needed): a
# rootfs of the static busybox binary plus its applet symlinks, `docker import`ed.
# Idempotent: does nothing when the image exists (pass --force to rebuild).
set -euo pipefail
image="${VOLSNAP_TEST_IMAGE:-volsnap-test-busybox:latest}"
if [ "${1:-}" != "--force" ] && docker image inspect "$image" >/dev/null 2>&1; then
  exit 0
fi
bb=""
for c in /bin/busybox /usr/bin/busybox; do
  if [ -x "$c" ] && file -L "$c" 2>/dev/null | grep -q "statically linked"; then bb=$c; break; fi
done
if [ -z "$bb" ]; then
  for c in /bin/busybox /usr/bin/busybox; do [ -x "$c" ] && bb=$c && break; done
fi
[ -n "$bb" ] || { echo "busybox not found: apt-get install busybox-static" >&2; exit 1; }
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/tmp" "$root/data" "$root/proc" "$root/sys" "$root/dev" "$root/etc"
cp "$bb" "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
echo "root:x:0:0:root:/:/bin/sh" >"$root/etc/passwd"
tar -C "$root" -c . | docker import -c 'CMD ["/bin/sh"]' -c 'ENV PATH=/bin' - "$image" >/dev/null
echo "built $image" >&2
