"""Create the bucket that ``WORKFLOW_CACHE_STORAGE`` (``s3://bucket/prefix``) names, if missing.

Run once before the workers start (the ``bucket`` job of compose.yaml):
``python -m workers.make_bucket``. The endpoint and keys come from the usual
``FSSPEC_S3_ENDPOINT_URL`` / ``AWS_*`` variables.
"""

from __future__ import annotations

import sys
import time

import fsspec  # type: ignore[import-untyped]

from workflow_cache.settings import current


def main() -> int:
    storage = current().storage or ""
    if not storage.startswith("s3://"):
        print(f"WORKFLOW_CACHE_STORAGE is {storage!r}, not s3://...: no bucket to make")
        return 0
    bucket = storage.removeprefix("s3://").split("/", 1)[0]
    fs = fsspec.filesystem("s3")
    for attempt in range(10):  # the server may still be opening its volumes
        try:
            if not fs.exists(bucket):
                fs.mkdir(bucket)
            print(f"bucket {bucket} ready")
            return 0
        except OSError as exc:
            print(f"bucket {bucket}: {exc}; retrying", file=sys.stderr)
            time.sleep(min(2**attempt, 10))
    return 1


if __name__ == "__main__":
    sys.exit(main())
