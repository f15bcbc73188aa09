# Runs the scenarios that /host/run.conf names, one after the other (started
# by the guest's /init; busybox sh).
#
# First the dataset is unpacked from the share into the guest's memory
# (/srv/data, tmpfs): the gateway exports that copy, so what the scenarios
# measure is the NFS path, not the 9p transport behind it.
#
# For each scenario: a fresh gateway state directory, the gateway started on
# the guest's loopback, the export mounted on $MNT, the scenario script run in
# a subshell with `set -e` (output in /host/out/NAME/log), then unmount and
# SIGTERM. The host reads the markers below from the console and owns the
# timeouts: a scenario that hangs gets the guest killed and the rest run in a
# new boot.
#
#   @@tidegate-vm setup-begin
#   @@tidegate-vm setup-end ok|fail TEXT
#   @@tidegate-vm begin NAME
#   @@tidegate-vm note TEXT            (from note/step in a scenario)
#   @@tidegate-vm end NAME pass|fail
#   @@tidegate-vm runner-done

. /host/run.conf
. /host/vm/lib.sh
export NFS_VERSION PORT MNT EXPECTED BIN SOURCE

say() { echo "@@tidegate-vm $*" > /dev/console; }

# Kernel messages go to each scenario's dmesg file, not over the markers.
dmesg -n 1
dmesg -c > /dev/null

say "setup-begin"
t0=$(now_cs)
mkdir -p "$SOURCE" /host/out
mount -t tmpfs -o mode=0755 tmpfs "$SOURCE"
if (cd "$SOURCE" && dd if=/host/data.cpio bs=1M 2>/dev/null | cpio -i -d -m) > /host/out/setup.log 2>&1; then
    say "setup-end ok dataset unpacked into $SOURCE in $(since "$t0")s ($(du -sm "$SOURCE" | cut -f1) MiB)"
else
    say "setup-end fail unpacking /host/data.cpio into $SOURCE: $(tail -n 3 /host/out/setup.log | tr '\n' ' ')"
    exit 1
fi

for name in $SCENARIOS; do
    OUT=/host/out/$name
    STATE=/tmp/state-$name
    export OUT STATE
    rm -rf "$OUT"
    mkdir -p "$OUT"
    say "begin $name"
    (
        set -e
        cd /
        gw_start
        nfs_mount
        cd "$MNT"
        . "/host/vm/scenarios/$name.sh"
    ) > "$OUT/log" 2>&1
    rc=$?
    cd /
    (
        set -e
        nfs_umount || fail "umount $MNT"
        gw_stop
    ) >> "$OUT/log" 2>&1
    teardown=$?
    dmesg -c > "$OUT/dmesg" 2>&1
    if [ $rc -eq 0 ] && [ $teardown -eq 0 ]; then
        say "end $name pass"
    else
        say "end $name fail"
    fi
done
say "runner-done"
