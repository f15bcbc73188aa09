# dd bs=1M of the 64 MiB file: throughput from cold caches and content, with
# the default attribute caching and again on a mount with actimeo=0.
# timeout: 300

big=$MNT/tree/big/64MiB.bin
want=$(grep ' \./big/64MiB\.bin$' "$EXPECTED/tree.md5" | cut -d' ' -f1)
[ -n "$want" ] || fail "no checksum for big/64MiB.bin in $EXPECTED/tree.md5"

dd_read() {
    drop_caches
    dd if="$big" of=/dev/null bs=1M 2> "$OUT/dd.err" || { cat "$OUT/dd.err"; return 1; }
    note "  $1: $(tail -n 1 "$OUT/dd.err")"
    drop_caches
    got=$(dd if="$big" bs=1M 2>/dev/null | md5sum | cut -d' ' -f1)
    [ "$got" = "$want" ] || fail "$1: md5 $got, the host has $want"
}

step "dd bs=1M" dd_read "default"
nfs_remount actimeo=0
step "dd bs=1M, actimeo=0" dd_read "actimeo=0"
