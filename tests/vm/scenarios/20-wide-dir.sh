# ls of a directory of 100,000 entries: every name exactly once.
#
# Names are checked byte for byte from readdir (the helper prints them raw;
# busybox ls shows bytes >= 0x80 as '?'), then with ls itself. The mount
# uses actimeo=600: ls lstat()s every entry, and with the default attribute
# timeout each lstat past a few seconds is one more GETATTR (100,000 of them
# add minutes under TCG and test nothing the dataset scenario does not).
# timeout: 600

nfs_remount actimeo=600

readdir_wide() {
    "$BIN/tidegate-guest" list "$MNT/wide" > "$OUT/wide.raw" 2> "$OUT/wide.progress" ||
        fail "readdir: $(tail -n 3 "$OUT/wide.progress" | tr '\n' ' ')"
    note "  readdir: $(tail -n 1 "$OUT/wide.progress")"
    sort "$OUT/wide.raw" > "$OUT/wide.sorted"
    got=$(wc -l < "$OUT/wide.raw")
    dups=$(uniq -d "$OUT/wide.sorted" | wc -l)
    note "  $got names, $dups of them more than once; the host has $(wc -l < "$EXPECTED/wide.names")"
    diff "$EXPECTED/wide.names" "$OUT/wide.sorted" > "$OUT/wide.diff" ||
        fail "names differ from the host's (see $OUT/wide.diff: $(sed -n '3,6p' "$OUT/wide.diff" | tr '\n' ' '))"
}

ls_wide() {
    ls -1A "$MNT/wide" > "$OUT/wide.ls"
    tr '\200-\377' '?' < "$EXPECTED/wide.names" | sort > "$OUT/wide.ls.expected"
    sort "$OUT/wide.ls" | diff "$OUT/wide.ls.expected" - > "$OUT/wide.ls.diff" ||
        fail "ls output differs from the host's names (see $OUT/wide.ls.diff)"
}

step "readdir wide (cold)" readdir_wide
step "ls -1A wide" ls_wide
rm -f "$OUT/wide.raw" "$OUT/wide.sorted" "$OUT/wide.ls" "$OUT/wide.ls.expected"
