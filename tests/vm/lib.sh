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
#   SOURCE_KIND  dir (the dataset copy in the guest's tmpfs) or s3
#   SOURCE       what the gateway exports: $DATA_DIR, or s3://BUCKET/PREFIX
#   GW_ARGS      extra `tidegate serve` arguments (the `# gateway:` header;
#                a scenario may change it before gw_restart)
#   ADMIN        where the gateway's admin endpoint listens when GW_ARGS
#                has `--admin $ADMIN` (for gw_stat and wait_uploads)
# With SOURCE_KIND=s3 also S3_BUCKET, S3_PREFIX, S3_ENDPOINT (the host's
# SeaweedFS as the guest reaches it) and the AWS_* credentials.
#
# Functions: note, fail, step, now_cs, since, nfs_mount, nfs_umount,
# nfs_remount, gw_start, gw_stop, gw_restart, gw_stat, wait_uploads,
# drop_caches.

MNT=/mnt/nfs
EXPECTED=/host/expected
BIN=/host/bin
# The dataset unpacked into the guest's tmpfs: the export of `source: dir`.
DATA_DIR=/srv/data
SOURCE=$DATA_DIR
SOURCE_KIND=dir
ADMIN=127.0.0.1:9180

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

# scenario_env NAME: the scenario's settings, written by the host
# (/host/vm/scenarios/NAME.env): GW_ARGS, and for S3 the source, the
# endpoint flags (SOURCE_ARGS) and the credentials.
scenario_env() {
    GW_ARGS=
    SOURCE_ARGS=
    SOURCE_KIND=dir
    if [ -f "/host/vm/scenarios/$1.env" ]; then
        . "/host/vm/scenarios/$1.env"
    fi
    if [ "$SOURCE_KIND" = dir ]; then
        SOURCE=$DATA_DIR
    fi
    export GW_ARGS SOURCE_ARGS SOURCE_KIND SOURCE
    echo "source: $SOURCE ($SOURCE_KIND)${GW_ARGS:+, gateway arguments: $GW_ARGS}"
}

# net_up ADDR/LEN URL: brings up the guest's NIC with a static address and
# checks that URL (the forwarded S3 endpoint) answers HTTP. The last line
# it prints says what it did.
net_up() {
    local dev="" d
    for d in /sys/class/net/*; do
        d=${d##*/}
        [ "$d" = lo ] && continue
        dev=$d
        break
    done
    [ -n "$dev" ] || { echo "no network device besides lo"; return 1; }
    ip link set "$dev" up || return 1
    ip addr add "$1" dev "$dev" || return 1
    # Any HTTP answer will do (S3 refuses an unsigned request).
    if ! timeout 20 wget -S -O /dev/null "$2/" 2>&1 | tee /tmp/net-probe.log | grep -q 'HTTP/1'; then
        cat /tmp/net-probe.log
        echo "$dev $1: no HTTP answer from $2"
        return 1
    fi
    echo "network: $dev $1, S3 at $2 answers"
}

# Listening on $PORT (state 0A in /proc/net/tcp)?
gw_listening() {
    local hex
    hex=$(printf '%04X' "$PORT")
    grep -q "^ *[0-9]*: 0100007F:$hex 00000000:0000 0A" /proc/net/tcp
}

# gw_start: starts the gateway over $SOURCE (with $SOURCE_ARGS, the S3
# endpoint flags) with state in $STATE (and the extra arguments in
# $GW_ARGS, if any) and waits until it listens. Its pid
# goes to /tmp/gw.pid and, when it exits, its status to /tmp/gw.status.
gw_start() {
    local i=0 log_from why
    rm -f /tmp/gw.pid /tmp/gw.status
    mkdir -p "$STATE"
    # Where this start's lines begin in the gateway log.
    log_from=$(( $(cat "$OUT/gateway.log" 2>/dev/null | wc -l) + 1 ))
    (
        # shellcheck disable=SC2086 # SOURCE_ARGS and GW_ARGS hold several arguments
        NO_COLOR=1 "$BIN/tidegate" serve "$SOURCE" ${SOURCE_ARGS:-} --listen "127.0.0.1:$PORT" \
            --workers 2 --state-dir "$STATE" ${GW_ARGS:-} >> "$OUT/gateway.log" 2>&1 &
        echo $! > /tmp/gw.pid
        # Not a bare `wait`: under the scenario's `set -e` a non-zero status
        # would end this subshell before it records the status.
        if wait $!; then status=0; else status=$?; fi
        echo "$status" > /tmp/gw.status
    ) &
    while ! gw_listening; do
        if [ -f /tmp/gw.status ]; then
            # Nothing left for gw_stop to stop.
            rm -f /tmp/gw.pid
            why=$(tail -n "+$log_from" "$OUT/gateway.log" | grep -m 1 -i error) ||
                why=$(tail -n 1 "$OUT/gateway.log")
            fail "the gateway exited with status $(cat /tmp/gw.status) during start-up: $why (see $OUT/gateway.log)"
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

# gw_stat NAME: one numeric field of the gateway's /stats (needs
# `--admin $ADMIN` in GW_ARGS); empty when the field is missing.
gw_stat() {
    wget -qO- "http://$ADMIN/stats" | tr ',{}' '\n\n\n' | sed -n "s/^\"$1\":\([0-9]*\)$/\1/p"
}

# wait_uploads [SECONDS]: waits until the store has every change (/stats
# upload_pending_keys, upload_pending_files and upload_pending_bytes all 0:
# uploads, copies, markers and deletes), at most SECONDS (default 120);
# fails after that, or when /stats lacks the fields.
wait_uploads() {
    local limit=${1:-120} t0 files bytes keys stats
    t0=$(now_cs)
    while :; do
        stats=$(wget -qO- "http://$ADMIN/stats") ||
            fail "GET http://$ADMIN/stats failed (is --admin $ADMIN in GW_ARGS?)"
        files=$(echo "$stats" | tr ',{}' '\n\n\n' | sed -n 's/^"upload_pending_files":\([0-9]*\)$/\1/p')
        bytes=$(echo "$stats" | tr ',{}' '\n\n\n' | sed -n 's/^"upload_pending_bytes":\([0-9]*\)$/\1/p')
        keys=$(echo "$stats" | tr ',{}' '\n\n\n' | sed -n 's/^"upload_pending_keys":\([0-9]*\)$/\1/p')
        if [ -z "$files" ] || [ -z "$bytes" ] || [ -z "$keys" ]; then
            fail "the gateway's /stats has no upload_pending_keys / _files / _bytes: $stats"
        fi
        if [ "$files" -eq 0 ] && [ "$bytes" -eq 0 ] && [ "$keys" -eq 0 ]; then
            note "  uploads drained in $(since "$t0")s"
            return 0
        fi
        if [ $(( $(now_cs) - t0 )) -gt $((limit * 100)) ]; then
            fail "uploads not drained after ${limit}s: $keys changes, $files files, $bytes bytes pending"
        fi
        sleep 0.5
    done
}

# Drops the client's page, dentry and inode caches, so that what follows is
# read from the server again.
drop_caches() {
    sync
    echo 3 > /proc/sys/vm/drop_caches
}
