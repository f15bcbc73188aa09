# The dataset's tree read over an S3-backed export: names, sizes, md5.
#
# The host's SeaweedFS holds the tree under the key prefix data/ of this
# scenario's bucket; the guest's gateway exports s3://vm-s3-read/data/
# through the one forwarded port. Empty directories are marker objects.
# The host check then finds the bucket exactly as it was filled.
# source: s3 tree
# s3-prefix: data/
# timeout: 300

[ "$SOURCE_KIND" = s3 ] || fail "this scenario exports S3 (source $SOURCE)"
note "  source $SOURCE via $S3_ENDPOINT"

got_root=$(ls -A "$MNT" | tr '\n' ' ')
[ "$got_root" = "tree " ] || fail "the export root shows '$got_root', want 'tree '"

cd "$MNT/tree"

list_sizes() {
    find . -type f | sort | while IFS= read -r p; do stat -c '%s %n' "$p"; done > "$OUT/tree.files"
    diff -u "$EXPECTED/tree.files" "$OUT/tree.files"
}
step "stat: sizes of every file" list_sizes

list_dirs() {
    find . -type d | sort > "$OUT/tree.dirs"
    diff -u "$EXPECTED/tree.dirs" "$OUT/tree.dirs"
}
step "find: every directory (empty ones are markers)" list_dirs

step "md5sum -c every file" sh -c 'md5sum -c "$EXPECTED/tree.md5" > "$OUT/md5sum.txt"'
drop_caches
step "md5sum -c every file, cold client caches" sh -c 'md5sum -c "$EXPECTED/tree.md5" > "$OUT/md5sum-cold.txt"'
step "restart the gateway" gw_restart
drop_caches
step "md5sum -c every file after the restart" sh -c 'md5sum -c "$EXPECTED/tree.md5" > "$OUT/md5sum-restart.txt"'
