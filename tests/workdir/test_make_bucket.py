"""The compose ``bucket`` job (``python -m workers.make_bucket``) against a real S3 API (moto)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import boto3

ROOT = Path(__file__).resolve().parents[2]


def test_make_bucket_creates_the_storage_bucket_once(s3) -> None:  # type: ignore[no-untyped-def]
    bucket = f"wfc-{uuid.uuid4().hex[:12]}"
    env = {
        **os.environ,
        "WORKFLOW_CACHE_STORAGE": f"s3://{bucket}/archives",
        "FSSPEC_S3_ENDPOINT_URL": s3.endpoint,
    }
    runs = [
        subprocess.run(
            [sys.executable, "-m", "workers.make_bucket"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        for _ in range(2)  # the second run finds it there
    ]
    for run in runs:
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == f"bucket {bucket} ready"
    names = [
        b["Name"] for b in boto3.client("s3", endpoint_url=s3.endpoint).list_buckets()["Buckets"]
    ]
    assert bucket in names
