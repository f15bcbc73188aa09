# probe: pjdfstest against the guest's tmpfs
# default: no
# needs: pjdfstest
# timeout: 1800
cat > /tmp/pjdfstest.toml <<'TOML'
[settings]
naptime = 0.1
allow_remount = false

[dummy_auth]
entries = [["nobody", "nobody"], ["tests", "tests"]]
TOML
mkdir -p /tmp/pj
NO_COLOR=1 "$BIN/pjdfstest" -c /tmp/pjdfstest.toml -p /tmp/pj > "$OUT/pj.txt" 2>&1 || true
note "$(grep -E '^Summary|rror' "$OUT/pj.txt" | head -3)"
