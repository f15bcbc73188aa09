#!/bin/sh
# /init of the kernel-client test guest (packed into the initramfs by
# install-vm-deps.sh; editing this file rebuilds the image).
#
# Brings up the bare minimum (proc, sys, dev, tmpfs, the NFS/9p/virtio
# modules, loopback), mounts the host's share on /host and hands over to the
# runner script that the share carries, so that changing scenarios never
# needs a new image. Whatever happens, it ends by powering the guest off;
# qemu runs with -no-reboot, so that ends qemu too.
#
# Lines starting with "@@tidegate-vm " on the console are read by the host.

export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export HOME=/root

say() { echo "@@tidegate-vm $*"; }

halt() {
    sync
    poweroff -f
    # poweroff -f does not return; if it somehow does, a panic (panic=-1)
    # still ends the guest.
    sleep 5
    exit 1
}

boot_failed() {
    say "boot-failed $*"
    halt
}

mount -t proc proc /proc || boot_failed "mount /proc"
mount -t sysfs sysfs /sys || boot_failed "mount /sys"
mount -t devtmpfs devtmpfs /dev || boot_failed "mount /dev"
mkdir -p /dev/pts /dev/shm
mount -t tmpfs -o mode=1777 tmpfs /tmp || boot_failed "mount /tmp"
mount -t tmpfs -o mode=1777 tmpfs /dev/shm

while read -r module; do
    insmod "/lib/modules/$module" || boot_failed "insmod $module"
done < /lib/modules/load-order

ip link set lo up || boot_failed "ip link set lo up"
hostname tidegate-vm

mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 host0 /host ||
    boot_failed "mount the 9p share host0 on /host"

if [ ! -f /host/vm/runner.sh ]; then
    boot_failed "the share has no vm/runner.sh"
fi
say "booted $(uname -r)"
sh /host/vm/runner.sh
say "runner-exit $?"
halt
