# pjdfstest (POSIX conformance) over the mount: passed / failed / skipped /
# excluded, and the pass rate over the cases that apply (goal ≥ 95 %).
#
# Its dummy users are the guest's nobody (65534) and tests (1000). Cases that
# do not apply to an NFSv3 export of an object store (special files, hard
# links, ...) are listed with their reasons in tests/vm/pjdfstest-exclusions.txt;
# a listed case that passes still counts as passed. Skipped cases are those
# pjdfstest itself skips (opt-in features, remounts).
# default: yes
# needs: pjdfstest
# timeout: 1200

PASS_PERCENT_MIN=95

cat > /tmp/pjdfstest.toml <<'TOML'
[settings]
naptime = 0.1
allow_remount = false

[dummy_auth]
entries = [["nobody", "nobody"], ["tests", "tests"]]
TOML

mkdir -p "$MNT/pjdfstest"
if NO_COLOR=1 "$BIN/pjdfstest" -c /tmp/pjdfstest.toml -p "$MNT/pjdfstest" > "$OUT/pjdfstest.txt" 2>&1; then
    rc=0
else
    rc=$?
fi
summary=$(grep '^Summary:' "$OUT/pjdfstest.txt" || true)
[ -n "$summary" ] ||
    fail "pjdfstest ended (exit $rc) without a summary: $(tail -n 3 "$OUT/pjdfstest.txt" | tr '\n' ' ')"
note "pjdfstest: $summary"

# Classify every case line ("NAME   ok|FAILED|skipped").
grep -E '^[^[:space:]]+::[^[:space:]]+[[:space:]]+(ok|FAILED|skipped)$' "$OUT/pjdfstest.txt" |
    awk '{print $1, $NF}' > /tmp/pjd.cases
grep -v '^#' /host/vm/pjdfstest-exclusions.txt | grep . > /tmp/pjd.excl
: > /tmp/pjd.excluded
: > /tmp/pjd.failed
passed=0
skipped=0
while read -r name result; do
    case $result in
        ok) passed=$((passed + 1)); continue ;;
        skipped) skipped=$((skipped + 1)); continue ;;
    esac
    reason=""
    while IFS="$(printf '\t')" read -r pattern why; do
        if echo "$name" | grep -qE "$pattern"; then
            reason=$why
            break
        fi
    done < /tmp/pjd.excl
    if [ -n "$reason" ]; then
        echo "$reason" >> /tmp/pjd.excluded
    else
        echo "$name" >> /tmp/pjd.failed
    fi
done < /tmp/pjd.cases
failed=$(wc -l < /tmp/pjd.failed)
excluded=$(wc -l < /tmp/pjd.excluded)
applicable=$((passed + failed))
note "cases: $passed passed, $failed failed, $skipped skipped by pjdfstest, $excluded excluded (do not apply)"
sort /tmp/pjd.excluded | uniq -c | while read -r n why; do
    note "  excluded $n: $why"
done
while read -r name; do
    note "  FAILED $name"
done < /tmp/pjd.failed
[ "$applicable" -gt 0 ] || fail "no applicable case ran"
percent=$((passed * 1000 / applicable))
note "pass rate over the cases that apply: $((percent / 10)).$((percent % 10)) % ($passed of $applicable; goal >= $PASS_PERCENT_MIN %)"
[ "$percent" -ge $((PASS_PERCENT_MIN * 10)) ] ||
    fail "pjdfstest pass rate $((percent / 10)).$((percent % 10)) % is below $PASS_PERCENT_MIN % (output in $OUT/pjdfstest.txt)"
