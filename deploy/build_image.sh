#!/usr/bin/env bash
# Builds deploy/Dockerfile.cpu with buildah, without a Docker daemon or a reachable Docker Hub.
#
#   bash deploy/build_image.sh [TAG]      # TAG default: localhost/onlinempo:0.1.0-cpu
#
# BASE_IMAGE picks the base; unset, a Debian bookworm with python3.11 is built once from the Debian mirror
# (mmdebstrap) and imported as localhost/onlinempo-base:bookworm-py3.11. The RUN steps see this host's pip
# configuration (CA bundle, find-links and file:// indexes, constraint file), mounted read-only and left out
# of the image, so the image resolves packages from the same sources as `deploy/install.sh` does here.
#
# Run it (as root) with host networking; podman's default rlimits exceed what a process without
# CAP_SYS_RESOURCE may set, so set them, and use runc where cgroups are mounted in hybrid mode (crun refuses):
#   podman --runtime runc run --rm --network host --ulimit nofile=20000:20000 --ulimit nproc=32768:32768 \
#     --shm-size=2g --entrypoint tini TAG -- ray start --head --temp-dir=... --block
set -euo pipefail

tag="${1:-localhost/onlinempo:0.1.0-cpu}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

base="${BASE_IMAGE:-localhost/onlinempo-base:bookworm-py3.11}"
if [[ -z "${BASE_IMAGE:-}" ]] && ! buildah inspect --type image "$base" >/dev/null 2>&1; then
  echo "[build_image] building $base from the Debian mirror"
  mmdebstrap --variant=minbase --include=python3.11,python3.11-venv,python3.11-dev,ca-certificates \
    bookworm "$work/base.tar" \
    "deb http://deb.debian.org/debian bookworm main" \
    "deb http://deb.debian.org/debian bookworm-updates main" \
    "deb http://deb.debian.org/debian-security bookworm-security main"
  container="$(buildah from scratch)"
  buildah add "$container" "$work/base.tar" /
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$container"
  buildah commit --rm "$container" "$base"
  rm -f "$work/base.tar"
fi

# This host's pip settings (files and environment; the environment wins), rewritten for the build.
declare -A pip_setting=()
while IFS='=' read -r key value; do
  key="${key#global.}"
  key="${key#:env:.}"
  value="${value#\'}"  # `pip config list` prints Python reprs: quoted, newlines as \n
  value="${value%\'}"
  pip_setting["$key"]="${value//\\n/ }"
done < <("$python" -m pip config list)

volumes=()
mount_local() {  # a local path named by the pip settings, at the same path inside the RUN steps
  local path="${1#file://}"
  path="${path%/simple}"  # a local index's pages link to files beside its simple/ directory
  if [[ "$path" == /* && -e "$path" ]]; then
    volumes+=(-v "$path:$path:ro")
  fi
}
{
  echo "[global]"
  if [[ -n "${pip_setting[cert]:-}" ]]; then
    echo "cert = /run/mpo-build/ca-certificates.crt"
    volumes+=(-v "${pip_setting[cert]}:/run/mpo-build/ca-certificates.crt:ro")
  fi
  for key in index-url extra-index-url find-links constraint trusted-host default-timeout; do
    [[ -n "${pip_setting[$key]:-}" ]] || continue
    echo "$key = ${pip_setting[$key]}"
    for value in ${pip_setting[$key]}; do
      mount_local "$value"
    done
  done
} >"$work/pip.conf"
volumes+=(-v "$work/pip.conf:/etc/pip.conf:ro")

echo "[build_image] building $tag on $base"
buildah bud --isolation chroot --layers --force-rm --build-arg "BASE_IMAGE=$base" "${volumes[@]}" \
  -f "$root/deploy/Dockerfile.cpu" -t "$tag" "$root"
buildah images "$tag"
