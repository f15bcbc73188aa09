# probe
# default: no
# timeout: 900
t0=$(now_cs); "$BIN/tidegate-guest" loader --root /host/data --workers 4 --epochs 1 --count 2000; note "9p direct 2000: $(since $t0)"
t0=$(now_cs); "$BIN/tidegate-guest" loader --root "$MNT" --workers 4 --epochs 1 --count 2000; note "nfs 2000: $(since $t0)"
t0=$(now_cs); "$BIN/tidegate-guest" loader --root "$MNT" --workers 4 --epochs 1 --count 2000; note "nfs 2000 again: $(since $t0)"
t0=$(now_cs); "$BIN/tidegate-guest" loader --root "$MNT" --workers 1 --epochs 1 --count 2000; note "nfs 2000 1 worker: $(since $t0)"
grep -E '^epoch' "$OUT/log" | while IFS= read -r l; do note "$l"; done
top -b -n 1 | head -20 > "$OUT/top"
