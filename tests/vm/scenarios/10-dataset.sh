# ls -lR, stat and md5sum of a generated tree against the host's listing.
#
# The tree has nested and empty directories; files of 0 B, 1 B, 4 KiB +- 1,
# 1 MiB +- 1 and 64 MiB; names with spaces and UTF-8. Checksums, sizes and
# names were computed on the host from the files themselves.
# timeout: 300

cd "$MNT/tree"

step "ls -lR" sh -c 'ls -lR . > "$OUT/ls-lR.txt"'
files=$(grep -c '^-' "$OUT/ls-lR.txt" || true)
dirs=$(grep -c '^d' "$OUT/ls-lR.txt" || true)
want_files=$(wc -l < "$EXPECTED/tree.files")
want_dirs=$(( $(wc -l < "$EXPECTED/tree.dirs") - 1 ))
[ "$files" -eq "$want_files" ] || fail "ls -lR shows $files files, the host has $want_files"
[ "$dirs" -eq "$want_dirs" ] || fail "ls -lR shows $dirs directories, the host has $want_dirs"

list_sizes() {
    find . -type f | sort | while IFS= read -r p; do stat -c '%s %n' "$p"; done > "$OUT/tree.files"
    diff -u "$EXPECTED/tree.files" "$OUT/tree.files"
}
step "stat: sizes of every file" list_sizes

list_dirs() {
    find . -type d | sort > "$OUT/tree.dirs"
    diff -u "$EXPECTED/tree.dirs" "$OUT/tree.dirs"
}
step "find: every directory" list_dirs

# The export shows files 0644 and directories 0755, owned by root.
check_modes() {
    got_f=$(find . -type f -exec stat -c '%a %u %g' {} + | sort -u | tr '\n' ';')
    got_d=$(find . -type d -exec stat -c '%a %u %g' {} + | sort -u | tr '\n' ';')
    [ "$got_f" = "644 0 0;" ] || fail "file modes/owners: $got_f (want 644 0 0)"
    [ "$got_d" = "755 0 0;" ] || fail "directory modes/owners: $got_d (want 755 0 0)"
}
step "stat: modes and owners" check_modes

step "md5sum -c every file" sh -c 'md5sum -c "$EXPECTED/tree.md5" > "$OUT/md5sum.txt"'
