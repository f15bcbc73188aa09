# ls of a directory of 100,000 entries: every name exactly once.
# timeout: 600

list_wide() {
    ls -1A "$MNT/wide" > "$OUT/wide.raw"
    sort "$OUT/wide.raw" > "$OUT/wide.sorted"
    got=$(wc -l < "$OUT/wide.raw")
    dups=$(uniq -d "$OUT/wide.sorted" | wc -l)
    want=$(wc -l < "$EXPECTED/wide.names")
    note "listed $got names ($dups duplicated), the host has $want"
    diff "$EXPECTED/wide.names" "$OUT/wide.sorted" > "$OUT/wide.diff" ||
        fail "listing differs from the host's (first lines of $OUT/wide.diff: $(head -n 5 "$OUT/wide.diff" | tr '\n' ' '))"
}
step "ls wide (cold)" list_wide
drop_caches
step "ls wide (after dropping caches)" list_wide
step "ls -l wide" sh -c 'ls -l "$MNT/wide" | grep -c "^-" > "$OUT/wide.l.count"'
n=$(cat "$OUT/wide.l.count")
[ "$n" -eq "$(wc -l < "$EXPECTED/wide.names")" ] || fail "ls -l shows $n files"
rm -f "$OUT/wide.raw" "$OUT/wide.sorted"
