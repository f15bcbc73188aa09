# Writes over S3 against a tmpfs model: create, append, overwrite, truncate, rm, mkdir, rmdir, mv, cp -r.
#
# Every operation runs twice, in a directory on the guest's tmpfs (the
# reference) and in $MNT/w; after each one both trees must hold the same
# directories and the same bytes. rmdir of a non-empty directory must fail
# (ENOTEMPTY). A generated tree (nested and empty directories, 300 small
# files, two multi-MiB ones) is copied in with cp -r and back out, and
# checked with md5sum -c after dropping the client's caches, after a gateway
# restart with uploads possibly still pending, and after the uploads have
# drained (/stats upload_pending_files and upload_pending_bytes at 0) and
# the gateway restarted again. The host check then compares the bucket with
# the reference: one object per file under w/ with its md5, a marker object
# for each empty directory, nothing else.
# source: s3 empty
# gateway: --admin 127.0.0.1:9180 --upload-delay 1s
# memory: 2048
# timeout: 1200

[ "$SOURCE_KIND" = s3 ] || fail "this scenario exports S3 (source $SOURCE)"

W=$MNT/w
M=/tmp/model
rm -rf "$M" /tmp/src /tmp/back
mkdir -p "$M"
mkdir "$W" || fail "mkdir $W"
# Shared random bytes for the operations below.
dd if=/dev/urandom of=/tmp/rand bs=1M count=1 2>/dev/null

# snapshot DIR: its directories and every file's md5, sorted.
snapshot() {
    (
        cd "$1" &&
            find . -type d | sort | sed 's/^/dir /' &&
            find . -type f -exec md5sum {} + | sort -k 2
    )
}

# same WHAT: the mount and the model hold the same tree.
same() {
    snapshot "$M" > "$OUT/model.snap"
    snapshot "$W" > "$OUT/mount.snap" || fail "$1: listing the mount failed"
    if ! diff -u "$OUT/model.snap" "$OUT/mount.snap" > "$OUT/snap.diff"; then
        fail "$1: the mount differs from the model: $(grep '^[-+][^-+]' "$OUT/snap.diff" | head -n 4 | tr '\n' ' ')(see $OUT/snap.diff)"
    fi
}

# op WHAT COMMANDS: runs COMMANDS (sh) in the model, then in the mount, then
# compares the two.
op() {
    local what=$1 t0
    (cd "$M" && eval "$2") > /tmp/op.out 2>&1 ||
        fail "$what: fails on tmpfs too, the scenario is wrong: $(tail -n 2 /tmp/op.out | tr '\n' ' ')"
    echo "--- op $what: $2"
    t0=$(now_cs)
    if ! (cd "$W" && eval "$2") > /tmp/op.out 2>&1; then
        cat /tmp/op.out
        note "$what FAILED $(since "$t0")s"
        fail "$what: $(tail -n 2 /tmp/op.out | tr '\n' ' ')"
    fi
    same "$what"
    note "$what ok $(since "$t0")s"
}

op "create" 'echo hello > f1 && : > empty && echo abc > f2 && head -c 70000 /tmp/rand > f3'
op "append" 'echo world >> f1 && printf more >> f2 && head -c 5000 /tmp/rand >> f3'
op "overwrite in place" 'printf XY | dd of=f1 bs=1 seek=1 conv=notrunc 2>/dev/null && dd if=/tmp/rand of=f3 bs=4096 skip=3 seek=2 count=5 conv=notrunc 2>/dev/null'
op "write past the end (a hole)" 'printf Z | dd of=f2 bs=1 seek=100000 conv=notrunc 2>/dev/null'
op "truncate shorter" 'truncate -s 3 f1 && truncate -s 4097 f3'
op "truncate longer" 'truncate -s 5000 f1'
op "truncate to zero (: >)" ': > f2'
op "overwrite a whole file (>)" 'head -c 100000 /tmp/rand > f2'
op "rm" 'rm f2 && [ ! -e f2 ]'
op "create after rm, same name" 'echo again > f2'
op "mkdir" 'mkdir d1 d2 d1/sub d1/sub/deeper d3'
op "rmdir an empty directory" 'rmdir d1/sub/deeper'
op "file in a subdirectory" 'echo x > d1/sub/file'

rmdir_nonempty() {
    if rmdir "$M/d1/sub" 2>/dev/null; then
        fail "rmdir of a non-empty directory succeeded on tmpfs: the scenario is wrong"
    fi
    if rmdir "$W/d1/sub" 2> /tmp/rmdir.err; then
        fail "rmdir of a non-empty directory succeeded"
    fi
    grep -qi 'not empty' /tmp/rmdir.err || fail "rmdir of a non-empty directory: $(cat /tmp/rmdir.err), want ENOTEMPTY"
    same "rmdir of a non-empty directory"
}
step "rmdir of a non-empty directory fails (ENOTEMPTY)" rmdir_nonempty
op "rmdir a directory that had files" 'rm d1/sub/file && rmdir d1/sub'

op "mv across directories" 'echo moving > d1/a && mv d1/a d2/a && [ ! -e d1/a ]'
op "mv over an existing file" 'echo old > d2/b && mv d2/a d2/b && [ ! -e d2/a ]'
op "mv within a directory" 'mv f1 f1.renamed'
op "mv into a directory, over a file there" 'echo target > d3/f3 && mv f3 d3/f3'
op "rmdir" 'rmdir d1'

# A tree to copy: nested and empty directories, a name with a space, 300
# small files of random sizes (0 to 20000 bytes) and two multi-MiB files.
make_tree() {
    mkdir -p /tmp/src/a/b/c /tmp/src/d /tmp/src/e/empty "/tmp/src/with space" /tmp/src/big
    awk 'BEGIN { srand(85); for (i = 1; i <= 300; i++) print i, int(rand() * 20000) }' |
        while read -r i size; do
            case $((i % 5)) in
                0) dir=a ;; 1) dir=a/b ;; 2) dir=a/b/c ;; 3) dir=d ;; *) dir="with space" ;;
            esac
            head -c "$size" /dev/urandom > "/tmp/src/$dir/f$i.bin"
        done
    head -c 3145728 /dev/urandom > /tmp/src/big/3MiB.bin
    head -c 5242881 /dev/urandom > /tmp/src/big/5MiB+1.bin
    (cd /tmp/src && find . -type f -exec md5sum {} + | sort -k 2) > /tmp/src.md5
    (cd /tmp/src && find . -type d | sort) > /tmp/src.dirs
    echo "$(grep -c . /tmp/src.md5) files, $(grep -c . /tmp/src.dirs) directories, $(du -sk /tmp/src | cut -f1) KiB"
}
step "make a tree in tmpfs" make_tree
cp -r /tmp/src "$M/tree"

check_tree() {
    (cd "$1" && md5sum -c /tmp/src.md5 > "$OUT/md5-$2.txt") || return 1
    (cd "$1" && find . -type d | sort) | diff /tmp/src.dirs - || return 1
}
step "cp -r the tree into the mount" cp -r /tmp/src "$W/tree"
step "md5sum -c in the mount" check_tree "$W/tree" copied
same "cp -r"
step "cp -r the tree back out of the mount" cp -r "$W/tree" /tmp/back
step "md5sum -c of the copy back" check_tree /tmp/back back
rm -rf /tmp/back

op "overwrite 192 KiB inside a 5 MiB file" 'dd if=/tmp/rand of=tree/big/5MiB+1.bin bs=65536 skip=1 seek=20 count=3 conv=notrunc 2>/dev/null'
op "append to a 3 MiB file" 'head -c 4097 /tmp/rand >> tree/big/3MiB.bin'
op "truncate a 3 MiB file" 'truncate -s 2000001 tree/big/3MiB.bin'
op "rm in the tree" 'rm tree/d/f3.bin tree/d/f8.bin'
# The tree's expectations from here on.
(cd "$M/tree" && find . -type f -exec md5sum {} + | sort -k 2) > /tmp/src.md5

drop_caches
step "md5sum -c after dropping the client's caches" check_tree "$W/tree" dropped
same "after drop_caches"

step "restart the gateway (uploads may be pending)" gw_restart
drop_caches
step "md5sum -c after the restart" check_tree "$W/tree" restarted
same "after the restart"

step "uploads drain" wait_uploads 180
step "restart the gateway (uploads done)" gw_restart
drop_caches
step "md5sum -c after the uploads and a restart" check_tree "$W/tree" uploaded
same "after the uploads and a restart"

# For the host check: the model's files (md5, ./path under w/) and
# directories.
(cd "$M" && find . -type f -exec md5sum {} + | sort -k 2) > "$OUT/expected.md5"
(cd "$M" && find . -type d | sort) > "$OUT/expected.dirs"
note "  model: $(grep -c . "$OUT/expected.md5") files, $(grep -c . "$OUT/expected.dirs") directories"
rm -rf "$M" /tmp/src /tmp/rand
