"""Host-side S3 helpers for the VM scenarios (boto3 against the SeaweedFS
that `cargo xtask vm` runs on the host's loopback).

Run by xtask as a script:

    s3vm.py ready SECONDS
        creates a probe bucket, writes an object and reads it back, retrying
        until SeaweedFS takes writes or SECONDS have passed;
    s3vm.py fill BUCKET PREFIX DATA [PART...]
        creates BUCKET and uploads DATA/PART/... as PREFIX + PART/... (files
        as objects, empty directories as `dir/` marker objects); prints one
        summary line.

Imported by the host checks (`tests/vm/scenarios/NN-name.check.py`, run with
this directory on PYTHONPATH) for the client and a few helpers. The
environment xtask sets:

    TIDEGATE_S3_ENDPOINT   http://127.0.0.1:PORT
    TIDEGATE_S3_BUCKET     the scenario's bucket (checks only)
    TIDEGATE_S3_PREFIX     the export's key prefix, "" or ending in "/"
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION
    OUT                    the scenario's output directory (what the guest
                           wrote to $OUT), host path
    EXPECTED               the host's expectations for the dataset
    SCENARIO               the scenario's name
"""

import concurrent.futures
import hashlib
import os
import sys
import time

import boto3
import botocore.config

PROBE_BUCKET = "vm-ready-probe"
UPLOAD_THREADS = 16


def client():
    return boto3.client(
        "s3",
        endpoint_url=os.environ["TIDEGATE_S3_ENDPOINT"],
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        region_name=os.environ.get("AWS_REGION", "us-east-1"),
        config=botocore.config.Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 3},
            max_pool_connections=UPLOAD_THREADS + 4,
        ),
    )


def bucket():
    return os.environ["TIDEGATE_S3_BUCKET"]


def prefix():
    return os.environ.get("TIDEGATE_S3_PREFIX", "")


def out_path(name):
    return os.path.join(os.environ["OUT"], name)


def fail(message):
    """Ends the check: the last line of stderr is the scenario's reason."""
    sys.stdout.flush()
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def note(message):
    print(message, flush=True)


def list_objects(s3, bucket_name, key_prefix=""):
    """Every object under key_prefix: {key: (size, etag)}."""
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket_name, Prefix=key_prefix
    ):
        for o in page.get("Contents", []):
            found[o["Key"]] = (o["Size"], o["ETag"].strip('"'))
    return found


def open_multipart_uploads(s3, bucket_name):
    """Multipart uploads started and neither completed nor aborted."""
    out = []
    for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket_name):
        out.extend(u["Key"] for u in page.get("Uploads", []))
    return out


def md5_of_object(s3, bucket_name, key):
    h = hashlib.md5()
    body = s3.get_object(Bucket=bucket_name, Key=key)["Body"]
    for chunk in iter(lambda: body.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


def read_md5_list(path):
    """An `md5sum` output file: [(md5, path)], paths as written (`./a/b`)."""
    entries = []
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            # "MD5  NAME" or "MD5 *NAME"; names may start with a space.
            digest, sep, name = line[:32], line[32:34], line[34:]
            if len(digest) != 32 or sep not in ("  ", " *"):
                raise ValueError(f"{path}: not an md5sum line: {line!r}")
            entries.append((digest, name))
    return entries


def compare_objects(s3, bucket_name, key_prefix, expected, allow_markers=()):
    """Checks that the objects under key_prefix are exactly `expected`
    ({relative key: md5}), plus directory markers (`dir/`, zero bytes) for
    directories in `allow_markers`. Returns a list of problems."""
    problems = []
    found = list_objects(s3, bucket_name, key_prefix)
    for key, (size, _etag) in sorted(found.items()):
        rel = key[len(key_prefix):]
        if rel in expected:
            continue
        if rel.endswith("/") and size == 0 and rel.rstrip("/") in allow_markers:
            continue
        problems.append(f"unexpected object {key!r} ({size} bytes)")
    missing = [rel for rel in expected if key_prefix + rel not in found]
    for rel in sorted(missing):
        problems.append(f"missing object {key_prefix + rel!r}")

    def check(rel):
        got = md5_of_object(s3, bucket_name, key_prefix + rel)
        if got != expected[rel]:
            return f"object {key_prefix + rel!r}: md5 {got}, expected {expected[rel]}"
        return None

    present = [rel for rel in expected if key_prefix + rel in found]
    with concurrent.futures.ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        problems.extend(p for p in pool.map(check, present) if p)
    return problems


def cmd_ready(seconds):
    deadline = time.monotonic() + float(seconds)
    s3 = client()
    last = None
    while True:
        try:
            try:
                s3.create_bucket(Bucket=PROBE_BUCKET)
            except s3.exceptions.BucketAlreadyOwnedByYou:
                pass
            s3.put_object(Bucket=PROBE_BUCKET, Key="probe", Body=b"ready")
            body = s3.get_object(Bucket=PROBE_BUCKET, Key="probe")["Body"].read()
            if body == b"ready":
                return 0
            last = f"read back {body!r}"
        except Exception as e:  # noqa: BLE001 - any failure means not ready yet
            last = repr(e)
        if time.monotonic() >= deadline:
            print(f"not ready after {seconds}s: {last}", file=sys.stderr)
            return 1
        time.sleep(0.3)


def cmd_fill(bucket_name, key_prefix, data, parts):
    s3 = client()
    try:
        s3.create_bucket(Bucket=bucket_name)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    uploads = []  # (path, key)
    markers = []
    for part in parts:
        root = os.path.join(data, part)
        if not os.path.isdir(root):
            print(f"dataset part {root} is not a directory", file=sys.stderr)
            return 1
        for dirpath, dirnames, filenames in os.walk(root):
            rel_dir = os.path.relpath(dirpath, data)
            if not dirnames and not filenames:
                markers.append(key_prefix + rel_dir + "/")
            for name in filenames:
                path = os.path.join(dirpath, name)
                if os.path.isfile(path) and not os.path.islink(path):
                    uploads.append((path, key_prefix + os.path.join(rel_dir, name)))
    total_bytes = sum(os.path.getsize(p) for p, _ in uploads)

    def put(item):
        path, key = item
        s3.upload_file(path, bucket_name, key)

    def put_marker(key):
        s3.put_object(Bucket=bucket_name, Key=key, Body=b"")

    with concurrent.futures.ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        list(pool.map(put, uploads))
        list(pool.map(put_marker, markers))
    listed = list_objects(s3, bucket_name, key_prefix)
    want = len(uploads) + len(markers)
    if len(listed) < want:
        print(f"{bucket_name}: {len(listed)} objects listed after uploading {want}", file=sys.stderr)
        return 1
    print(
        f"{len(uploads)} objects ({total_bytes / 1048576:.1f} MiB) and "
        f"{len(markers)} directory markers from {', '.join(parts) or 'nothing'}"
    )
    return 0


def main(argv):
    if len(argv) >= 2 and argv[1] == "ready" and len(argv) == 3:
        return cmd_ready(argv[2])
    if len(argv) >= 5 and argv[1] == "fill":
        return cmd_fill(argv[2], argv[3], argv[4], argv[5:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
