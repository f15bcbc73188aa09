# Data loader: 4 parallel readers, 10,000 small files, shuffled, bytes checked.
#
# The access pattern of a training data loader: each reader opens, reads to
# the end and closes one file after another, in a shuffled order.
# timeout: 600

step "loader: 4 workers x 10000 files" \
    "$BIN/tidegate-guest" loader --root "$MNT" --workers 4 --epochs 1 --seed 1
grep '^epoch.*files/s' "$OUT/log" | while IFS= read -r line; do note "$line"; done
