"""Host check of 85-writes: the bucket matches the guest's tmpfs model of
w/ ($OUT/expected.md5, $OUT/expected.dirs): one object w/PATH per file with
the file's md5, a zero-byte marker w/DIR/ for every empty directory (and
markers allowed for the others), nothing else: no temporary or .nfs*
objects, no multipart upload left open."""

import s3vm

s3 = s3vm.client()
bucket, prefix = s3vm.bucket(), s3vm.prefix()
top = prefix + "w/"

expected = {
    "w/" + name[2:]: digest for digest, name in s3vm.read_md5_list(s3vm.out_path("expected.md5"))
}
with open(s3vm.out_path("expected.dirs"), encoding="utf-8") as f:
    dirs = ["w" + line.rstrip("\n")[1:] for line in f if line.strip()]
problems = s3vm.compare_objects(s3, bucket, prefix, expected, allow_markers=set(dirs))

# A directory with no file anywhere below it exists in S3 only as a marker.
found = s3vm.list_objects(s3, bucket, prefix)
for d in dirs:
    if not any(k.startswith(prefix + d + "/") for k in found):
        problems.append(f"empty directory {d!r} has no marker object {prefix + d + '/'!r}")

uploads = s3vm.open_multipart_uploads(s3, bucket)
if uploads:
    problems.append(f"multipart uploads left open: {uploads}")
if problems:
    for p in problems:
        print(p)
    s3vm.fail(f"{len(problems)} problem(s) in s3://{bucket}/{prefix}, first: {problems[0]}")
s3vm.note(
    f"s3://{bucket}/{top}: {len(expected)} objects with the model's md5, "
    f"{len(dirs)} directories, nothing else"
)
