#!/usr/bin/env bash
# Builds kube-apiserver and kube-controller-manager v1.20.2 from Debian's
# source package (no prebuilt downloads are possible here) and caches them
# under ~/.cache/kubernaut/k8s-1.20.2/bin. A cached build is reused; the
# first build takes about 10 minutes on 2 cores.
set -euo pipefail

VERSION_DEB="1.20.5+really1.20.2-1.1+deb12u1"
CACHE="${KUBERNAUT_CACHE:-$HOME/.cache/kubernaut}"
OUT="$CACHE/k8s-1.20.2"
BIN="$OUT/bin"

if [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kube-controller-manager" ]; then
  exit 0
fi

log() { echo "build-k8s: $*" >&2; }
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"

"$(dirname "$0")/deps.sh"

# deb-src for bookworm, needed once for `apt-get source`.
SRC_LIST=/etc/apt/sources.list.d/kubernaut-deb-src.sources
if [ ! -f "$SRC_LIST" ]; then
  log "adding a deb-src entry for bookworm"
  $SUDO tee "$SRC_LIST" >/dev/null <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  $SUDO apt-get update -qq
fi

WORK="$OUT/src"
mkdir -p "$WORK"
cd "$WORK"
TREE=$(find . -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)
if [ -z "$TREE" ]; then
  log "fetching Debian source package kubernetes=$VERSION_DEB"
  apt-get source -qq "kubernetes=$VERSION_DEB" >/dev/null
  TREE=$(find . -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)
fi
cd "$TREE"

# The vendored reflect2 1.0.1 crashes the API server under Go >= 1.18 as soon
# as a custom resource is created; 1.0.2 from Debian fixes it.
if ! grep -q "1.0.2" vendor/github.com/modern-go/reflect2/.kubernaut-patched 2>/dev/null; then
  log "replacing vendored modern-go/reflect2 with Debian's 1.0.2"
  rm -rf vendor/github.com/modern-go/reflect2
  mkdir -p vendor/github.com/modern-go/reflect2
  cp -r /usr/share/gocode/src/github.com/modern-go/reflect2/. vendor/github.com/modern-go/reflect2/
  rm -f vendor/github.com/modern-go/reflect2/go.mod vendor/github.com/modern-go/reflect2/go.sum
  echo 1.0.2 > vendor/github.com/modern-go/reflect2/.kubernaut-patched
fi

# As Debian's rules do: the build expects the tree inside a GOPATH.
mkdir -p .go/src/k8s.io
[ -e .go/src/k8s.io/kubernetes ] || ln -s "$PWD" .go/src/k8s.io/kubernetes

log "compiling kube-apiserver and kube-controller-manager (about 10 minutes on 2 cores)"
start=$(date +%s)
# Go prints little while it compiles: a heartbeat says it is still going.
( while sleep 30; do log "still compiling ($(( $(date +%s) - start ))s so far)"; done ) &
HEARTBEAT=$!
trap 'kill $HEARTBEAT 2>/dev/null || true' EXIT
(
  cd .go/src/k8s.io/kubernetes
  PATH=/usr/lib/go-1.19/bin:$PATH GOPATH="$WORK/$TREE/.go" CGO_ENABLED=0 GOPROXY=off \
    GOFLAGS=-mod=vendor \
    KUBE_GIT_VERSION=v1.20.2 KUBE_GIT_TREE_STATE=clean \
    make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" 2>&1 |
    while IFS= read -r line; do echo "build-k8s: [$(( $(date +%s) - start ))s] $line" >&2; done
)
kill "$HEARTBEAT" 2>/dev/null || true
mkdir -p "$BIN"
for b in kube-apiserver kube-controller-manager; do
  f=$(find . -path '*/_output/*' -type f -name "$b" | head -n1)
  [ -n "$f" ] || { log "build produced no $b"; exit 1; }
  cp "$f" "$BIN/$b.tmp" && mv "$BIN/$b.tmp" "$BIN/$b"
done
log "done in $(( $(date +%s) - start ))s: $BIN"
# Sources are large (~1 GiB with build output); the binaries are all we keep.
cd "$OUT" && rm -rf "$WORK"
