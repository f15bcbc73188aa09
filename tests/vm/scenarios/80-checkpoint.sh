# Checkpoints over S3: write ckpt.tmp, fsync, rename over ckpt; readers never see a mix.
#
# The pattern of torch.save + os.replace: each generation is a 256 MiB
# ckpt.tmp written in four 64 MiB dd chunks (the last with fsync, so the
# client sends COMMIT), then renamed over ckpt. Meanwhile a reader in the
# guest reads ckpt over and over: every read must be one whole generation
# (its md5 is one of the generations written so far), and once the first
# rename has returned ckpt must always open. Then the gateway's uploads must
# drain (/stats upload_pending_files and upload_pending_bytes reach 0), the
# last generation reads back after a restart, and the host check finds the
# object ckpt with the last generation's md5 and nothing else in the bucket
# (no ckpt.tmp, no .nfs* silly-rename leftovers, no open multipart upload).
# source: s3 empty
# gateway: --admin 127.0.0.1:9180 --upload-delay 1s
# memory: 3072
# timeout: 1500

[ "$SOURCE_KIND" = s3 ] || fail "this scenario exports S3 (source $SOURCE)"

GENERATIONS=3
CHUNKS=4
CHUNK=64M
SIZE=$((CHUNKS * 64 * 1024 * 1024))
# md5 of every generation written so far: a line is added before its rename.
SUMS=/tmp/ckpt.sums
# Exists once the first rename has returned.
RENAMED=/tmp/ckpt.renamed
STOP=/tmp/ckpt.stop
# The reader's count of finished reads.
READ_COUNT=/tmp/ckpt.reads
: > "$SUMS"
: > "$OUT/reader.log"
: > "$OUT/generations"
echo 0 > "$READ_COUNT"
rm -f "$RENAMED" "$STOP"

# One line per read in $OUT/reader.log: `ok GEN`, `missing` (before the
# first rename only), `MISMATCH MD5` or `ERROR TEXT`.
reader() {
    local n=0 was_renamed out sum gen
    while [ ! -f "$STOP" ]; do
        was_renamed=0
        [ -f "$RENAMED" ] && was_renamed=1
        if out=$(md5sum "$MNT/ckpt" 2>&1); then
            sum=${out%% *}
            gen=$(grep -n -x "$sum" "$SUMS" | cut -d: -f1)
            if [ -n "$gen" ]; then
                echo "ok $gen" >> "$OUT/reader.log"
            else
                echo "MISMATCH $sum" >> "$OUT/reader.log"
            fi
        elif [ "$was_renamed" = 0 ]; then
            echo "missing" >> "$OUT/reader.log"
            sleep 0.2
        else
            echo "ERROR $(echo "$out" | tail -n 1)" >> "$OUT/reader.log"
            sleep 0.2
        fi
        n=$((n + 1))
        echo "$n" > "$READ_COUNT"
    done
}

# wait_reads N SECONDS: until the reader has finished N more reads.
wait_reads() {
    local want t0
    want=$(( $(cat "$READ_COUNT") + $1 ))
    t0=$(now_cs)
    while [ "$(cat "$READ_COUNT")" -lt "$want" ]; do
        if [ $(( $(now_cs) - t0 )) -gt $(($2 * 100)) ]; then
            fail "the reader finished no read within $2 s ($(cat "$READ_COUNT") reads so far)"
        fi
        sleep 0.5
    done
}

write_tmp() {
    local i=0 conv
    while [ $i -lt $CHUNKS ]; do
        # The first chunk truncates (O_TRUNC), the rest write in place; the
        # last one fsyncs the file.
        conv=notrunc
        [ $i -eq 0 ] && conv=
        [ $i -eq $((CHUNKS - 1)) ] && conv=notrunc,fsync
        dd if=/tmp/gen of="$MNT/ckpt.tmp" bs=$CHUNK count=1 skip=$i seek=$i iflag=fullblock \
            ${conv:+conv=$conv} 2> /tmp/dd.err || { cat /tmp/dd.err; return 1; }
        i=$((i + 1))
    done
    sync "$MNT/ckpt.tmp"
    got=$(stat -c %s "$MNT/ckpt.tmp")
    [ "$got" -eq "$SIZE" ] || { echo "ckpt.tmp has $got bytes, want $SIZE"; return 1; }
}

# stop_reader: lets the reader finish its current read and end (also when
# the scenario fails, so that nothing holds the mount at the unmount).
stop_reader() {
    touch "$STOP"
    if [ -n "${reader_pid:-}" ]; then
        wait "$reader_pid" 2>/dev/null || true
        reader_pid=
    fi
}
trap stop_reader EXIT

reader &
reader_pid=$!
note "  reader pid $reader_pid"

gen=1
while [ $gen -le $GENERATIONS ]; do
    dd if=/dev/urandom of=/tmp/gen bs=1M count=$((SIZE / 1048576)) 2>/dev/null
    sum=$(md5sum /tmp/gen | cut -d' ' -f1)
    step "generation $gen: write ckpt.tmp ($CHUNKS x $CHUNK, fsync)" write_tmp
    echo "$sum" >> "$SUMS"
    echo "$gen $sum" >> "$OUT/generations"
    step "generation $gen: mv ckpt.tmp ckpt" mv "$MNT/ckpt.tmp" "$MNT/ckpt"
    touch "$RENAMED"
    rm -f /tmp/gen
    # At least one read that starts after this rename.
    wait_reads 2 300
    gen=$((gen + 1))
done
stop_reader

reads=$(grep -c . "$OUT/reader.log" || true)
ok=$(grep -c '^ok ' "$OUT/reader.log" || true)
missing=$(grep -c '^missing' "$OUT/reader.log" || true)
bad=$(grep -c -e '^MISMATCH' -e '^ERROR' "$OUT/reader.log" || true)
note "  reader: $reads reads, $ok whole generations ($(grep '^ok ' "$OUT/reader.log" | sort | uniq -c | awk '{printf "gen %s: %s  ", $3, $1}')), $missing before the first rename, $bad bad"
[ "$bad" -eq 0 ] || fail "the reader saw $bad bad reads: $(grep -e '^MISMATCH' -e '^ERROR' "$OUT/reader.log" | head -n 3 | tr '\n' ' ')"
[ "$ok" -ge "$GENERATIONS" ] || fail "the reader read only $ok whole checkpoints"

last=$(tail -n 1 "$SUMS")
echo "$last" > "$OUT/ckpt.md5"
step "uploads drain" wait_uploads 180

check_final() {
    local names got
    names=$(ls -A "$MNT" | tr '\n' ' ')
    [ "$names" = "ckpt " ] || { echo "the export holds '$names', want 'ckpt '"; return 1; }
    got=$(md5sum "$MNT/ckpt" | cut -d' ' -f1)
    [ "$got" = "$last" ] || { echo "ckpt has md5 $got, the last generation $last"; return 1; }
}
drop_caches
step "ckpt is the last generation, nothing else in the export" check_final
step "restart the gateway" gw_restart
drop_caches
step "ckpt is the last generation after the restart" check_final
