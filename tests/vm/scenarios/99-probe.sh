# probe
# default: no
# timeout: 900
t0=$(now_cs); "$BIN/tidegate-guest" gen /tmp/src; note "gen in guest: $(since $t0)"
"$BIN/tidegate" serve /tmp/src --listen 127.0.0.1:2050 --workers 2 --state-dir /tmp/st2 > "$OUT/gw2.log" 2>&1 &
sleep 3
mkdir -p /mnt/t
mount -t nfs -o vers=3,proto=tcp,nolock,port=2050,mountport=2050,mountproto=tcp,addr=127.0.0.1 127.0.0.1:/ /mnt/t
t0=$(now_cs); "$BIN/tidegate-guest" loader --root /mnt/t --workers 4 --epochs 1 --count 2000; note "nfs over tmpfs 2000: $(since $t0)"
t0=$(now_cs); "$BIN/tidegate-guest" loader --root "$MNT" --workers 4 --epochs 1 --count 2000; note "nfs over 9p 2000: $(since $t0)"
t0=$(now_cs); "$BIN/tidegate-guest" list /mnt/t/wide > /dev/null 2> "$OUT/l1"; note "list tmpfs: $(tail -n1 $OUT/l1)"
t0=$(now_cs); "$BIN/tidegate-guest" list "$MNT/wide" > /dev/null 2> "$OUT/l2"; note "list 9p: $(tail -n1 $OUT/l2)"
grep -E '^epoch' "$OUT/log" | while IFS= read -r l; do note "$l"; done
umount /mnt/t
