# The block cache under the kernel client: a loop device in the guest as
# the cache (O_DIRECT, the gateway's own ring), the memory tier off so every
# hit is a device read sent from the cache buffer. Every file reads right
# on the cold pass, from the cache on the second pass (no misses), and
# again after a restart (the cache survives it).
# timeout: 900

ADMIN=127.0.0.1:9180
stat_of() {
    wget -qO- "http://$ADMIN/stats" | tr ',{}' '\n\n\n' | sed -n "s/^\"$1\":\([0-9]*\)$/\1/p"
}

dd if=/dev/zero of=/tmp/cache.backing bs=1M count=192 2>/dev/null
loopdev=$(losetup -f)
losetup "$loopdev" /tmp/cache.backing || fail "losetup $loopdev"
note "  cache device $loopdev (192 MiB, a file on the guest's tmpfs)"

GW_ARGS="--cache $loopdev --cache-memory 0 --admin $ADMIN"
export GW_ARGS
step "restart the gateway with the cache" gw_restart

drop_caches
step "md5sum -c tree, cold" sh -c 'cd "$MNT/tree" && md5sum -c "$EXPECTED/tree.md5" > "$OUT/md5-cold.txt"'
misses_cold=$(stat_of cache_misses_total)
inserts=$(stat_of cache_inserts_total)
note "  cold pass: $misses_cold misses, $inserts blocks written to the cache"
[ "${misses_cold:-0}" -gt 0 ] || fail "the cold pass made no cache misses: is the cache in use? ($(wget -qO- "http://$ADMIN/stats"))"

drop_caches
step "md5sum -c tree, from the cache" sh -c 'cd "$MNT/tree" && md5sum -c "$EXPECTED/tree.md5" > "$OUT/md5-warm.txt"'
misses_warm=$(stat_of cache_misses_total)
hits=$(stat_of cache_hits_total)
note "  second pass: $((misses_warm - misses_cold)) new misses, $hits hits, zero-copy sends $(stat_of send_zc_total)"
[ "$misses_warm" -eq "$misses_cold" ] || fail "the second pass missed the cache $((misses_warm - misses_cold)) times"

step "restart the gateway (the cache stays)" gw_restart
drop_caches
step "md5sum -c tree after the restart" sh -c 'cd "$MNT/tree" && md5sum -c "$EXPECTED/tree.md5" > "$OUT/md5-restart.txt"'
misses_after=$(stat_of cache_misses_total)
note "  after the restart: $misses_after misses, $(stat_of cache_hits_total) hits"
[ "${misses_after:-1}" -eq 0 ] || fail "after the restart $misses_after reads missed the cache"

GW_ARGS=
step "restart the gateway without the cache" gw_restart
losetup -d "$loopdev" || true
rm -f /tmp/cache.backing
