"""Host check of 80-checkpoint: the bucket holds exactly one object, ckpt,
with the md5 of the last generation the guest wrote ($OUT/ckpt.md5); no
ckpt.tmp, no .nfs* silly-rename leftover, no multipart upload left open."""

import posixpath

import s3vm

s3 = s3vm.client()
bucket, prefix = s3vm.bucket(), s3vm.prefix()
with open(s3vm.out_path("ckpt.md5"), encoding="ascii") as f:
    want = f.read().strip()
if len(want) != 32:
    s3vm.fail(f"$OUT/ckpt.md5 holds {want!r}, not an md5")

found = s3vm.list_objects(s3, bucket, prefix)
s3vm.note(f"s3://{bucket}/{prefix}: {sorted(found)}")
problems = []
for key in sorted(found):
    name = posixpath.basename(key.rstrip("/"))
    if key == prefix + "ckpt.tmp":
        problems.append("ckpt.tmp is still in the bucket")
    elif name.startswith(".nfs"):
        problems.append(f"silly-rename leftover {key!r}")
    elif key != prefix + "ckpt":
        problems.append(f"unexpected object {key!r}")
if prefix + "ckpt" not in found:
    problems.append("no object ckpt")
else:
    size = found[prefix + "ckpt"][0]
    got = s3vm.md5_of_object(s3, bucket, prefix + "ckpt")
    s3vm.note(f"ckpt: {size} bytes, md5 {got}, the last generation {want}")
    if got != want:
        problems.append(f"ckpt has md5 {got} ({size} bytes), the last generation has {want}")
uploads = s3vm.open_multipart_uploads(s3, bucket)
if uploads:
    problems.append(f"multipart uploads left open: {uploads}")
if problems:
    for p in problems:
        print(p)
    s3vm.fail("; ".join(problems))
s3vm.note("ok: ckpt is the last generation and alone in the bucket")
