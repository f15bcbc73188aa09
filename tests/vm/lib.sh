# Helpers for the guest-side scenario scripts (busybox sh). Sourced by
# runner.sh; every scenario runs in a subshell with `set -e` after the runner
# has started the gateway and mounted it on $MNT.
#
# Variables a scenario can use:
#   MNT          the NFS mount point (the export root, i.e. the dataset root)
#   EXPECTED     host-computed expectations (checksums, listings)
#   OUT          this scenario's output directory on the share (its log is
#                OUT/log; put anything worth keeping there)
#   BIN          static helper binaries (tidegate, tidegate-guest, ...)
#   NFS_VERSION  3, 4.0, 4.1 or 4.2
#   PORT         the gateway's port (MOUNT and NFS)
#   STATE        the gateway's state directory (kept across gw_restart)
#
# Functions: note, fail, step, now_cs, since, nfs_mount, nfs_umount,
# nfs_remount, gw_start, gw_stop, gw_restart, drop_caches.

MNT=/mnt/nfs
EXPECTED=/host/expected
BIN=/host/bin
# The exported directory: the dataset unpacked into the guest's tmpfs.
SOURCE=/srv/data

# A line for the host: shown live under the scenario's result line.
note() {
    echo "note: $*"
    echo "@@tidegate-vm note $*" > /dev/console
}

fail() {
    echo "FAIL: $*" >&2
    echo "@@tidegate-vm note FAIL: $*" > /dev/console
    exit 1
}

# Centiseconds since boot.
now_cs() {
    local up _rest
    read -r up _rest < /proc/uptime
    echo "${up%.*}${up#*.}"
}

# Seconds (two decimals) since a now_cs value.
since() {
    local d=$(( $(now_cs) - $1 ))
    printf '%d.%02d' $((d / 100)) $((d % 100))
}

# step NAME CMD [ARGS...]: runs CMD, notes its outcome and duration, returns
# its status (so under `set -e` a failed step ends the scenario).
step() {
    local name=$1 t0 rc
    shift
    echo "--- step $name: $*"
    t0=$(now_cs)
    if "$@"; then rc=0; else rc=$?; fi
    if [ "$rc" -eq 0 ]; then
        note "$name ok $(since "$t0")s"
    else
        note "$name FAILED (exit $rc) $(since "$t0")s"
    fi
    return "$rc"
}

mount_options() {
    case $NFS_VERSION in
        3) echo "vers=3,proto=tcp,nolock,port=$PORT,mountport=$PORT,mountproto=tcp,addr=127.0.0.1" ;;
        4.0|4.1|4.2) echo "vers=$NFS_VERSION,proto=tcp,port=$PORT,addr=127.0.0.1,clientaddr=127.0.0.1" ;;
        *) fail "unknown NFS version $NFS_VERSION" ;;
    esac
}

# nfs_mount [EXTRA_OPTIONS]: mounts the export root on $MNT.
nfs_mount() {
    local opts
    opts=$(mount_options)
    if [ -n "$1" ]; then opts="$opts,$1"; fi
    mkdir -p "$MNT"
    echo "mount -t nfs -o $opts 127.0.0.1:/ $MNT"
    if ! mount -t nfs -o "$opts" 127.0.0.1:/ "$MNT" 2> /tmp/mount.err; then
        cat /tmp/mount.err
        fail "NFSv$NFS_VERSION mount failed: $(tail -n 1 /tmp/mount.err) (options $opts; kernel log in $OUT/dmesg)"
    fi
}

nfs_umount() {
    if ! grep -q " $MNT nfs" /proc/mounts; then
        return 0
    fi
    umount "$MNT" || umount -f "$MNT" || umount -l "$MNT" || return 1
}

# nfs_remount [EXTRA_OPTIONS]: unmounts and mounts again (new options, cold
# client caches).
nfs_remount() {
    nfs_umount || fail "umount $MNT"
    nfs_mount "$1"
}

# Listening on $PORT (state 0A in /proc/net/tcp)?
gw_listening() {
    local hex
    hex=$(printf '%04X' "$PORT")
    grep -q "^ *[0-9]*: 0100007F:$hex 00000000:0000 0A" /proc/net/tcp
}

# gw_start: starts the gateway over $SOURCE with state in $STATE (and the
# extra arguments in $GW_ARGS, if any) and waits until it listens. Its pid
# goes to /tmp/gw.pid and, when it exits, its status to /tmp/gw.status.
gw_start() {
    local i=0
    rm -f /tmp/gw.pid /tmp/gw.status
    mkdir -p "$STATE"
    (
        # shellcheck disable=SC2086 # GW_ARGS holds several arguments
        NO_COLOR=1 "$BIN/tidegate" serve "$SOURCE" --listen "127.0.0.1:$PORT" --workers 2 \
            --state-dir "$STATE" ${GW_ARGS:-} >> "$OUT/gateway.log" 2>&1 &
        echo $! > /tmp/gw.pid
        wait $!
        echo $? > /tmp/gw.status
    ) &
    while ! gw_listening; do
        if [ -f /tmp/gw.status ]; then
            fail "the gateway exited with status $(cat /tmp/gw.status) during start-up; see $OUT/gateway.log"
        fi
        i=$((i + 1))
        if [ $i -gt 600 ]; then
            fail "the gateway does not listen on port $PORT after 60 s; see $OUT/gateway.log"
        fi
        sleep 0.1
    done
    echo "gateway pid $(cat /tmp/gw.pid) listening on 127.0.0.1:$PORT"
}

# gw_stop: SIGTERM, then up to 30 s for a clean exit (status 0).
gw_stop() {
    local pid i=0 status
    [ -f /tmp/gw.pid ] || return 0
    pid=$(cat /tmp/gw.pid)
    kill -TERM "$pid" 2>/dev/null || true
    while [ ! -f /tmp/gw.status ]; do
        i=$((i + 1))
        if [ $i -gt 300 ]; then
            kill -KILL "$pid" 2>/dev/null || true
            rm -f /tmp/gw.pid
            fail "the gateway did not exit within 30 s of SIGTERM"
        fi
        sleep 0.1
    done
    status=$(cat /tmp/gw.status)
    rm -f /tmp/gw.pid
    [ "$status" = 0 ] || fail "the gateway exited with status $status after SIGTERM; see $OUT/gateway.log"
    echo "gateway stopped (status 0)"
}

gw_restart() {
    gw_stop
    gw_start
}

# Drops the client's page, dentry and inode caches, so that what follows is
# read from the server again.
drop_caches() {
    sync
    echo 3 > /proc/sys/vm/drop_caches
}
