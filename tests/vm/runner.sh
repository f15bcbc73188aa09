# Runs the scenarios that /host/run.conf names, one after the other (started
# by the guest's /init; busybox sh).
#
# First the dataset is unpacked from the share into the guest's memory
# (/srv/data, tmpfs): the gateway exports that copy, so what the scenarios
# measure is the NFS path, not the 9p transport behind it. (Skipped when
# every scenario of this boot exports S3: NEED_DATA=0.) When a scenario
# exports S3, the guest has a NIC: it gets the static address GUEST_NET, and
# its only way out is the host's forwarding of GUEST_S3 to SeaweedFS.
#
# For each scenario: its settings from /host/vm/scenarios/NAME.env (source,
# S3 endpoint and keys, extra gateway arguments), a fresh gateway state
# directory, the gateway started on the guest's loopback, the export mounted
# on $MNT, the scenario script run in a subshell with `set -e` (output in
# /host/out/NAME/log), then unmount and SIGTERM. The host reads the markers
# below from the console and owns the timeouts: a scenario that hangs gets
# the guest killed and the rest run in a new boot.
#
#   @@tidegate-vm setup-begin
#   @@tidegate-vm setup-end ok|fail TEXT
#   @@tidegate-vm begin NAME
#   @@tidegate-vm note TEXT            (from note/step in a scenario)
#   @@tidegate-vm end NAME pass|fail
#   @@tidegate-vm runner-done

. /host/run.conf
. /host/vm/lib.sh
export NFS_VERSION PORT MNT EXPECTED BIN SOURCE DATA_DIR

say() { echo "@@tidegate-vm $*" > /dev/console; }

# Kernel messages go to each scenario's dmesg file, not over the markers.
dmesg -n 1
dmesg -c > /dev/null

say "setup-begin"
t0=$(now_cs)
mkdir -p "$DATA_DIR" /host/out
: > /host/out/setup.log
setup_text=""

# The clock: S3 request signatures are refused when it is minutes off.
guest_time=$(date +%s)
if [ -n "${HOST_TIME:-}" ]; then
    skew=$((guest_time - HOST_TIME))
    if [ "$skew" -gt 120 ] || [ "$skew" -lt -120 ]; then
        date -u -s "@$HOST_TIME" >> /host/out/setup.log 2>&1 || true
        setup_text="$setup_text; clock was ${skew}s off the host's, set"
    fi
fi

if [ "${NEED_DATA:-1}" = 1 ]; then
    mount -t tmpfs -o mode=0755 tmpfs "$DATA_DIR"
    if (cd "$DATA_DIR" && dd if=/host/data.cpio bs=1M 2>/dev/null | cpio -i -d -m) >> /host/out/setup.log 2>&1; then
        setup_text="$setup_text; dataset unpacked into $DATA_DIR in $(since "$t0")s ($(du -sm "$DATA_DIR" | cut -f1) MiB)"
    else
        say "setup-end fail unpacking /host/data.cpio into $DATA_DIR: $(tail -n 3 /host/out/setup.log | tr '\n' ' ')"
        exit 1
    fi
fi

if [ -n "${GUEST_NET:-}" ]; then
    if net_up "$GUEST_NET" "$GUEST_S3" >> /host/out/setup.log 2>&1; then
        setup_text="$setup_text; $(tail -n 1 /host/out/setup.log)"
    else
        say "setup-end fail guest network: $(tail -n 3 /host/out/setup.log | tr '\n' ' ')"
        exit 1
    fi
fi
say "setup-end ok ${setup_text#; }"

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
        scenario_env "$name"
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
