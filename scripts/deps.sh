#!/usr/bin/env bash
# Installs the Debian packages the local stack and the build need.
# Idempotent: packages already present are not touched, and `apt-get update`
# runs only when something is missing.
set -euo pipefail

PKGS=(etcd-server postgresql redis-server openssl rsync golang-1.19-go
      dpkg-dev curl jq ca-certificates golang-github-modern-go-reflect2-dev
      prometheus-alertmanager prometheus python3-aiosmtpd buildah skopeo)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ! command -v kubectl >/dev/null 2>&1; then missing+=(kubernetes-client); fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The Debian packages start their own daemons; the stack runs private
  # instances on free ports, so the system ones are not needed.
  for svc in postgresql redis-server etcd prometheus-alertmanager prometheus; do
    $SUDO service "$svc" stop >/dev/null 2>&1 || true
  done
fi
