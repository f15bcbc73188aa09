# pjdfstest (POSIX conformance) over the mount; reports its counts.
#
# Its dummy users are the guest's nobody (65534) and tests (1000). Every
# test case works in a directory that pjdfstest creates under the mount, so
# while the export is read-only it stops at that first mkdir (EROFS) and runs
# nothing. On the guest's tmpfs the same binary and configuration run 398
# cases in about 15 s.
# default: no
# needs: pjdfstest
# timeout: 1200

cat > /tmp/pjdfstest.toml <<'TOML'
[settings]
naptime = 0.1
allow_remount = false

[dummy_auth]
entries = [["nobody", "nobody"], ["tests", "tests"]]
TOML

if NO_COLOR=1 "$BIN/pjdfstest" -c /tmp/pjdfstest.toml -p "$MNT" > "$OUT/pjdfstest.txt" 2>&1; then
    rc=0
else
    rc=$?
fi
summary=$(grep '^Summary:' "$OUT/pjdfstest.txt" || true)
if [ -n "$summary" ]; then
    note "$summary"
else
    note "pjdfstest ended (exit $rc) without a summary: $(tail -n 3 "$OUT/pjdfstest.txt" | tr '\n' ' ')"
fi
[ "$rc" -eq 0 ] || fail "pjdfstest exited with $rc (output in $OUT/pjdfstest.txt)"
