#!/usr/bin/env bash
# Assembles the image's whole root filesystem in DEST from the release
# binary BIN: the binary (stripped), exactly the shared libraries it links
# (as ldd resolves them, with the loader), the CA bundle for TLS to the
# API server, PostgreSQL, Redis, the LLM and notification endpoints, and a
# passwd/group naming the non-root user 65532. Both `make image`
# (scripts/image.sh) and the Containerfile use it, so the two images hold
# the same files.
set -euo pipefail
BIN=${1:?usage: image-root.sh BINARY DEST}
DEST=${2:?usage: image-root.sh BINARY DEST}
CA=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
[ -x "$BIN" ] || { echo "image-root: no binary at $BIN" >&2; exit 1; }
[ -s "$CA" ] || { echo "image-root: no CA bundle at $CA (Debian: ca-certificates)" >&2; exit 1; }

rm -rf "$DEST"
mkdir -p "$DEST/usr/local/bin" "$DEST/etc/ssl/certs" "$DEST/tmp"
chmod 1777 "$DEST/tmp"
# Symbols and debug info are most of the binary's size; logs and spans,
# not backtraces, are how it is debugged in a cluster.
strip --strip-all -o "$DEST/usr/local/bin/kubernaut" "$BIN"
chmod 0755 "$DEST/usr/local/bin/kubernaut"

# Every library the binary needs, at the path the loader looks for it
# (symlinks resolved: the image holds real files only).
ldd "$BIN" | awk '/=> \// {print $3} /^[ \t]*\// {print $1}' | sort -u | while read -r lib; do
  mkdir -p "$DEST$(dirname "$lib")"
  cp -L "$lib" "$DEST$lib"
done
cp -L "$CA" "$DEST/etc/ssl/certs/ca-certificates.crt"

cat > "$DEST/etc/passwd" <<'P'
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
P
cat > "$DEST/etc/group" <<'G'
root:x:0:
nonroot:x:65532:
G
# glibc's resolver: the kubelet mounts /etc/hosts and /etc/resolv.conf.
echo 'hosts: files dns' > "$DEST/etc/nsswitch.conf"
