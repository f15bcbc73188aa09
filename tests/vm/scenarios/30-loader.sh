# A training data loader: 4 parallel readers open, read and close 10,000
# small files in a shuffled order (2 epochs), checking every byte.
# timeout: 600

step "loader 4 workers x 10000 files x 2 epochs" \
    "$BIN/tidegate-guest" loader --root "$MNT" --workers 4 --epochs 2 --seed 1
grep '^epoch' "$OUT/log" | while IFS= read -r line; do note "$line"; done
