#!/usr/bin/env bash
# Build docker/collector.Dockerfile (unchanged) with podman, on a machine without a Docker engine
# and, if need be, without a container registry.
#
#   docker/build-image.sh [TAG]        # default: clearml-relay-collector:latest (make image)
#   TRAINER_TAG=clearml-relay-trainer docker/build-image.sh   # and docker/trainer.Dockerfile too
#   (TRAINER_ULTRALYTICS= leaves Ultralytics out of the trainer: the suite mounts its own)
#   CLEARML_RELAY_IMAGE_PULL=0: never try a registry for the base image (the suite: no traffic
#   off the machine but the package indexes the build installs from)
#
# 1. podman: installed from Debian (podman, runc, mmdebstrap) when missing, as root only.
# 2. What podman needs here and nothing else, as a drop-in file it names
#    (/etc/containers/containers.conf.d/50-clearml-relay.conf): default container ulimits no
#    higher than this machine's hard limits when they are below podman's defaults (root without
#    CAP_SYS_RESOURCE cannot raise them, and every container would fail to start), and runc as
#    the runtime when the cgroup layout is not the unified one (crun refuses a hybrid layout).
# 3. The base image the Dockerfile names (python:3.11-slim): pulled when a registry answers;
#    otherwise made from Debian packages with mmdebstrap (Debian 12's Python is 3.11, the same
#    wheels) from the mirror apt uses, and imported under that name. The root filesystem is
#    cached under $CLEARML_RELAY_IMAGE_CACHE (default ~/.cache/clearml-relay/image) and the image
#    labelled with a digest of its inputs: made again only when they change.
# 4. podman build --format docker (the OCI format drops HEALTHCHECK) --pull=never, with the
#    host's CA bundle mounted for pip during the build only (never copied into the image).
#
# Says what it changed on the machine ("changed: ..."), and ends with the image's size.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TAG=${1:-clearml-relay-collector:latest}
BASE=docker.io/library/python:3.11-slim
CACHE=${CLEARML_RELAY_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/clearml-relay/image}
DROPIN=/etc/containers/containers.conf.d/50-clearml-relay.conf
SUITE=bookworm
PACKAGES=python3,python3-venv,python3-pip,python-is-python3,ca-certificates,netbase,tzdata
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
started=$(date +%s)

say() { echo "build-image: $*" >&2; }
changed() { echo "build-image: changed: $*" >&2; }
die() { say "$*"; exit 2; }

ensure_podman() {
    local missing=() tool
    for tool in podman runc mmdebstrap; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    [ ${#missing[@]} -gt 0 ] || return 0
    [ "$(id -u)" = 0 ] || die "missing: ${missing[*]}: apt-get install ${missing[*]} (as root), then run again"
    say "installing ${missing[*]} from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; }
    changed "installed the Debian packages ${missing[*]}"
}

configure_podman() {
    [ "$(id -u)" = 0 ] || return 0  # rootless podman has its own limits and runtime choice
    local lines=() nofile nproc
    nofile=$(ulimit -Hn)
    nproc=$(ulimit -Hu)
    if [ "$nofile" != unlimited ] && [ "$nofile" -lt 1048576 ]; then
        [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ] && nproc=32768
        lines+=("[containers]" "default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=$nproc:$nproc\"]")
    fi
    if [ "$(stat -fc %T /sys/fs/cgroup)" != cgroup2fs ]; then
        command -v runc >/dev/null || die "this cgroup layout needs runc: apt-get install runc"
        lines+=("[engine]" "runtime = \"runc\"")
    fi
    [ ${#lines[@]} -gt 0 ] || return 0
    local want
    want=$(printf '%s\n' "# Written by clearml-relay's docker/build-image.sh: what podman needs on this machine." "${lines[@]}")
    if [ ! -f "$DROPIN" ] || [ "$(cat "$DROPIN")" != "$want" ]; then
        mkdir -p "$(dirname "$DROPIN")"
        printf '%s\n' "$want" >"$DROPIN"
        changed "wrote $DROPIN (${lines[*]})"
    fi
}

mirror() {
    # The first Debian mirror apt uses (deb822 .sources or a sources.list line), else Debian's CDN.
    local uri
    uri=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -n1 || true)
    [ -n "$uri" ] || uri=$(grep -hsE '^deb ' /etc/apt/sources.list | awk '{print $2}' | grep -v security | head -n1 || true)
    echo "${uri:-http://deb.debian.org/debian}"
}

ensure_base() {
    local url key label rootfs
    url=$(mirror)
    key=$(printf '%s\n' "$SUITE" "$PACKAGES" "$url" "minbase v1" | sha256sum | cut -c1-16)
    if podman image exists "$BASE"; then
        label=$(podman image inspect --format '{{index .Labels "org.clearml-relay.base"}}' "$BASE" 2>/dev/null || true)
        if [ -z "$label" ] || [ "$label" = "<no value>" ] || [ "$label" = "$key" ]; then
            say "base image $BASE is there${label:+ (made from Debian packages, $key)}"
            return
        fi
        say "base image $BASE was made from other inputs ($label): making it again"
    elif [ "${CLEARML_RELAY_IMAGE_PULL:-1}" != 0 ] && timeout 60 podman pull -q "$BASE" >/dev/null 2>&1; then
        say "pulled $BASE"
        return
    fi
    command -v mmdebstrap >/dev/null || die "no registry answers and mmdebstrap is missing: apt-get install mmdebstrap"
    rootfs="$CACHE/rootfs-$key.tar"
    if [ ! -f "$rootfs" ]; then
        mkdir -p "$CACHE"
        say "no registry answers: making $BASE from Debian $SUITE packages ($url) with mmdebstrap"
        rm -rf "$CACHE"/rootfs-*.tar "$rootfs.part"
        mmdebstrap --quiet --format=tar --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs.part" "$url"
        mv "$rootfs.part" "$rootfs"
        changed "cached the base root filesystem in $rootfs"
    fi
    podman import -q \
        --change 'ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV=LANG=C.UTF-8' \
        --change "LABEL=org.clearml-relay.base=$key" \
        --change 'CMD=["python3"]' \
        "$rootfs" "$BASE" >/dev/null
    changed "imported $BASE into podman's image store (Debian $SUITE minbase and $PACKAGES)"
}

build() {  # build DOCKERFILE TAG [podman build arguments...]
    local dockerfile=$1 tag=$2 mounts=() size
    shift 2
    [ -f "$CA_BUNDLE" ] && mounts=(--volume "$CA_BUNDLE:$CA_BUNDLE:ro")
    say "building $tag from docker/$dockerfile"
    podman build --quiet --format docker --pull=never "${mounts[@]}" "$@" \
        --file "$ROOT/docker/$dockerfile" --tag "$tag" "$ROOT" >/dev/null
    size=$(podman image inspect --format '{{.Size}}' "$tag")
    say "image $tag: $size bytes ($((size / 1000000)) MB), built in $(($(date +%s) - started)) s"
}

ensure_podman
configure_podman
ensure_base
build collector.Dockerfile "$TAG"
if [ -n "${TRAINER_TAG:-}" ]; then
    if [ -n "${TRAINER_ULTRALYTICS+set}" ]; then
        build trainer.Dockerfile "$TRAINER_TAG" --build-arg "ULTRALYTICS=$TRAINER_ULTRALYTICS"
    else
        build trainer.Dockerfile "$TRAINER_TAG"
    fi
fi
