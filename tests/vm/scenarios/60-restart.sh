# Gateway restart under a live mount: no ESTALE, same content.
#
# Reading continues from descriptors and a working directory opened before
# the restart (handles persist in the state directory). Then a restart in
# the middle of a parallel read: the client retries, every file reads right.
# timeout: 600

big=$MNT/tree/big/64MiB.bin
want=$(grep ' \./big/64MiB\.bin$' "$EXPECTED/tree.md5" | cut -d' ' -f1)

cd "$MNT/tree/deep/a/b/c"
exec 3< "$big"
step "read 16 MiB before the restart" sh -c 'dd bs=1M count=16 of=/tmp/part1 <&3 2>/dev/null'
step "md5sum -c tree before the restart" sh -c 'cd "$MNT/tree" && md5sum -c "$EXPECTED/tree.md5" > "$OUT/md5-before.txt"'

step "restart the gateway" gw_restart
drop_caches

step "read the rest from the open descriptor" sh -c 'dd bs=1M of=/tmp/part2 <&3 2>/dev/null'
got=$(cat /tmp/part1 /tmp/part2 | md5sum | cut -d' ' -f1)
rm -f /tmp/part1 /tmp/part2
[ "$got" = "$want" ] || fail "64 MiB file read across the restart: md5 $got, want $want"
exec 3<&-
step "ls and stat in the working directory" sh -c 'ls -la . > /dev/null && stat mid.bin > /dev/null && ls d/e/f/g/h > /dev/null'
step "md5sum -c tree after the restart" sh -c 'cd "$MNT/tree" && md5sum -c "$EXPECTED/tree.md5" > "$OUT/md5-after.txt"'
cd "$MNT"

# A restart while 4 readers are busy: their calls are retried on the new
# server, and every file still reads correctly.
drop_caches
"$BIN/tidegate-guest" loader --root "$MNT" --workers 4 --epochs 1 --count 2000 --seed 7 > "$OUT/loader.txt" 2>&1 &
loader=$!
sleep 2
step "restart during a parallel read" gw_restart
if wait "$loader"; then
    note "  $(grep '^epoch.*files/s' "$OUT/loader.txt")"
else
    cat "$OUT/loader.txt"
    fail "the loader failed across a restart (see $OUT/loader.txt)"
fi
