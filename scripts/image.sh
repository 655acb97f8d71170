#!/usr/bin/env bash
# The container image, built without a container daemon (buildah, vfs
# storage, nothing run inside it): FROM scratch plus the files
# scripts/image-root.sh gathers. Storage lives under ~/.cache/kubernaut.
#
#   image.sh build   release build, image localhost/kubernaut:VERSION,
#                    OCI and docker archives under $CARGO_TARGET_DIR/image
#   image.sh root    a working container of the image, mounted; prints
#                    "NAME ROOT" (for tests that chroot into it)
#   image.sh rm NAME removes that working container
#   image.sh env     the environment that points buildah and skopeo here
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE="${KUBERNAUT_CACHE:-$HOME/.cache/kubernaut}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
STORE="$CACHE/containers"
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)
IMAGE="localhost/kubernaut:$VERSION"
OUT="$CARGO_TARGET_DIR/image"

mkdir -p "$STORE"
cat > "$STORE/storage.conf" <<CONF
[storage]
driver = "vfs"
runroot = "$STORE/run"
graphroot = "$STORE/storage"
CONF
export CONTAINERS_STORAGE_CONF="$STORE/storage.conf"
say() { echo "image: $*" >&2; }
bud() { buildah --storage-driver vfs "$@"; }

case "${1:-build}" in
env)
  echo "CONTAINERS_STORAGE_CONF=$CONTAINERS_STORAGE_CONF"
  echo "IMAGE=$IMAGE"
  ;;
root)
  name=$(bud from --quiet --pull-never "$IMAGE")
  echo "$name $(bud mount "$name")"
  ;;
rm)
  bud rm "${2:?image.sh rm NAME}" >/dev/null
  ;;
build)
  command -v buildah >/dev/null && command -v skopeo >/dev/null || bash "$ROOT/scripts/deps.sh"
  say "building the release binary (cargo build --release; minutes when cold)"
  (cd "$ROOT" && cargo build --release --locked -p kubernaut --bin kubernaut)
  revision=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
  git -C "$ROOT" diff --quiet HEAD 2>/dev/null || revision="$revision-dirty"
  source=$(git -C "$ROOT" config --get remote.origin.url 2>/dev/null || echo "https://github.com/kubernaut/kubernaut")
  rootfs="$OUT/rootfs"
  bash "$ROOT/scripts/image-root.sh" "$CARGO_TARGET_DIR/release/kubernaut" "$rootfs"

  say "assembling $IMAGE from scratch"
  ctr=$(bud from --quiet scratch)
  trap 'bud rm "$ctr" >/dev/null 2>&1 || true' EXIT
  bud copy --quiet "$ctr" "$rootfs/" / >/dev/null
  bud config \
    --user 65532:65532 \
    --workingdir / \
    --entrypoint '["/usr/local/bin/kubernaut"]' \
    --cmd 'serve --config /etc/kubernaut/config.yaml' \
    --port 8080 --port 9090 --port 8443 \
    --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    --label "org.opencontainers.image.title=kubernaut" \
    --label "org.opencontainers.image.description=Kubernetes remediation control plane" \
    --label "org.opencontainers.image.version=$VERSION" \
    --label "org.opencontainers.image.revision=$revision" \
    --label "org.opencontainers.image.source=$source" \
    --label "org.opencontainers.image.licenses=Apache-2.0" \
    --annotation "org.opencontainers.image.version=$VERSION" \
    --annotation "org.opencontainers.image.revision=$revision" \
    --annotation "org.opencontainers.image.source=$source" \
    "$ctr"
  bud commit --quiet --format oci --rm "$ctr" "$IMAGE" >/dev/null
  # The previous build, untagged now, would otherwise stay in the store.
  bud rmi --prune >/dev/null 2>&1 || true
  trap - EXIT

  mkdir -p "$OUT"
  rm -f "$OUT/kubernaut.oci.tar" "$OUT/kubernaut.tar"
  skopeo copy --quiet "containers-storage:$IMAGE" "oci-archive:$OUT/kubernaut.oci.tar:kubernaut:$VERSION"
  skopeo copy --quiet "containers-storage:$IMAGE" "docker-archive:$OUT/kubernaut.tar:kubernaut:$VERSION"
  size=$(du -sb "$rootfs" | cut -f1)
  packed=$(gzip -c "$OUT/kubernaut.tar" | wc -c)
  awk -v i="$IMAGE" -v r="$revision" -v s="$size" -v p="$packed" \
    'BEGIN { printf "image: %s (%s): %.1f MB unpacked, %.1f MB compressed\n", i, r, s / 1e6, p / 1e6 }'
  echo "image: $OUT/kubernaut.tar (docker-archive: docker load -i, kind load image-archive)"
  echo "image: $OUT/kubernaut.oci.tar (oci-archive: skopeo copy oci-archive:... docker://REGISTRY/kubernaut:$VERSION)"
  ;;
*)
  echo "usage: image.sh build|root|rm NAME|env" >&2; exit 2 ;;
esac
