# Runs the scenarios that /host/run.conf names, one after the other (started
# by the guest's /init; busybox sh).
#
# For each scenario: a fresh gateway state directory, the gateway started on
# the guest's loopback, the export mounted on $MNT, the scenario script run in
# a subshell with `set -e` (output in /host/out/NAME/log), then unmount and
# SIGTERM. The host reads the markers below from the console and owns the
# timeouts: a scenario that hangs gets the guest killed and the rest run in a
# new boot.
#
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
