# mmap reads compared with read(2) and with the expected bytes.
#
# Pages are faulted in a random order, a second mapping starts at an offset,
# and the tail of the last page past the end of the file must be zero.
# timeout: 300

step "mmap vs read" "$BIN/tidegate-guest" mmap --root "$MNT" \
    tree/empty.bin "tree/one byte.bin" \
    tree/pages/4095.bin tree/pages/4096.bin tree/pages/4097.bin \
    tree/mib/1048575.bin tree/mib/1048576.bin tree/mib/1048577.bin \
    "tree/日本語/ファイル 1.bin" tree/big/64MiB.bin
