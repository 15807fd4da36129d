"""A real S3 API for the storage tests: moto's server on loopback, with one bucket."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.servers import free_port

BUCKET = "workflow-cache-tests"


@dataclass(frozen=True)
class S3:
    endpoint: str

    def options(self) -> dict[str, Any]:
        """fsspec storage options for s3fs: credentials come from the environment."""
        return {"client_kwargs": {"endpoint_url": self.endpoint}}


@pytest.fixture(scope="session")
def s3() -> Iterator[S3]:
    boto3 = pytest.importorskip("boto3")
    pytest.importorskip("s3fs")
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.delenv("AWS_PROFILE", raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            endpoint = f"http://{host}:{port}"
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
            yield S3(endpoint)
        finally:
            server.stop()


@dataclass(frozen=True)
class Target:
    """Where a test's storage lives: a URL plus fsspec options."""

    kind: str
    url: str
    options: dict[str, Any]


@pytest.fixture(params=["local", "s3"])
def target(request: pytest.FixtureRequest, tmp_path: Any) -> Target:
    """Each storage test runs against a local folder and against S3 (moto)."""
    if request.param == "local":
        return Target("local", str(tmp_path / "storage"), {})
    s3: S3 = request.getfixturevalue("s3")
    return Target("s3", f"s3://{BUCKET}/{uuid.uuid4().hex}", s3.options())
