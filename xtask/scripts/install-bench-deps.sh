#!/usr/bin/env bash
# Installs the peers of the side-by-side benchmark on a Debian 12 machine (run
# as root): NFS-Ganesha with its VFS backend, rpcbind (Ganesha registers with
# it), iproute2 (network namespaces), plus everything install-test-deps.sh
# installs (libnfs-utils and the nfs-engine fio build).
# Idempotent: when everything is present it only checks and exits.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

APT_PACKAGES=(
    nfs-ganesha
    nfs-ganesha-vfs
    rpcbind
    iproute2
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

for bin in ganesha.nfsd rpcbind ip; do
    command -v "$bin" >/dev/null 2>&1 || [[ -x /usr/sbin/$bin || -x /usr/bin/$bin || -x /sbin/$bin ]] \
        || die "$bin not found after install"
done
log "ganesha: $(ganesha.nfsd -v 2>&1 | head -n1 || true)"

"$SCRIPT_DIR/install-test-deps.sh"
log "done"
