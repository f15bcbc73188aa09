# dd bs=1M of the 64 MiB file, with default attribute caching and actimeo=0.
#
# Each time: the throughput from cold caches, then the content's md5.
# timeout: 300

big=$MNT/tree/big/64MiB.bin
want=$(grep ' \./big/64MiB\.bin$' "$EXPECTED/tree.md5" | cut -d' ' -f1)
[ -n "$want" ] || fail "no checksum for big/64MiB.bin in $EXPECTED/tree.md5"

dd_read() {
    drop_caches
    t0=$(now_cs)
    dd if="$big" of=/dev/null bs=1M 2> "$OUT/dd.err" || { cat "$OUT/dd.err"; return 1; }
    cs=$(( $(now_cs) - t0 ))
    note "  $1: 64 MiB in $(since "$t0")s = $(( 6400 / (cs > 0 ? cs : 1) )) MiB/s"
    drop_caches
    got=$(dd if="$big" bs=1M 2>/dev/null | md5sum | cut -d' ' -f1)
    [ "$got" = "$want" ] || fail "$1: md5 $got, the host has $want"
}

step "dd bs=1M" dd_read "default"
nfs_remount actimeo=0
step "dd bs=1M, actimeo=0" dd_read "actimeo=0"
