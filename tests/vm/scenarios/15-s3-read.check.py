"""Host check of 15-s3-read: the read-only pass left the bucket exactly as
the host filled it (the tree's files with their md5, the empty directories'
markers, nothing else, no multipart upload open)."""

import os

import s3vm

s3 = s3vm.client()
bucket, prefix = s3vm.bucket(), s3vm.prefix()
expected = {
    "tree/" + name[2:]: digest
    for digest, name in s3vm.read_md5_list(os.path.join(os.environ["EXPECTED"], "tree.md5"))
}
with open(os.path.join(os.environ["EXPECTED"], "tree.dirs"), encoding="utf-8") as f:
    dirs = {"tree" + line.rstrip("\n")[1:] for line in f if line.strip()}
problems = s3vm.compare_objects(s3, bucket, prefix, expected, allow_markers=dirs)
uploads = s3vm.open_multipart_uploads(s3, bucket)
if uploads:
    problems.append(f"open multipart uploads: {uploads}")
if problems:
    for p in problems:
        print(p)
    s3vm.fail(f"{len(problems)} problem(s) in s3://{bucket}/{prefix}, first: {problems[0]}")
s3vm.note(f"s3://{bucket}/{prefix}: {len(expected)} objects as filled, md5 checked")
