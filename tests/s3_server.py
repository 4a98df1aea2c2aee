"""A real S3 server on loopback for the S3 tests: moto in server mode, started per test module.

Nothing else is reachable: the environment points every AWS client at the server, with
dummy credentials, a fixed region and the instance-metadata lookup turned off. Tests read
what annopull wrote through boto3, an S3 client independent of annopull's.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

moto_server = pytest.importorskip(
    "moto.server", reason="the S3 tests need moto[server]: pip install -e '.[dev,test-s3]'"
)
boto3 = pytest.importorskip("boto3", reason="the S3 tests read back with boto3 (moto's dependency)")

#: What every client (annopull's in-process and subprocess ones, boto3) gets.
DUMMY_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
#: What could make a client look elsewhere (a developer's profile, a real session).
_DROPPED = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")


@dataclass
class S3Server:
    """The running server and a boto3 client of it."""

    endpoint: str
    client: Any

    def env(self) -> dict[str, str]:
        """Variables that point an AWS client at this server."""
        return DUMMY_ENV | {"AWS_ENDPOINT_URL": self.endpoint}

    def bucket(self, name: str) -> str:
        """Create bucket ``name`` (empty) and return it."""
        self.client.create_bucket(Bucket=name)
        return name

    def get(self, bucket: str, key: str) -> bytes:
        """An object's bytes, through boto3."""
        body: bytes = self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return body

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key under ``prefix``."""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", ())]

    def uploads(self, bucket: str) -> list[str]:
        """Keys of unfinished multipart uploads."""
        return [
            u["Key"] for u in self.client.list_multipart_uploads(Bucket=bucket).get("Uploads", ())
        ]


@pytest.fixture(scope="module", name="s3_server")
def s3_server_fixture() -> Iterator[S3Server]:
    """moto's S3 on 127.0.0.1 (a free port), with every AWS variable pointing at it."""
    saved = {name: os.environ.get(name) for name in (*DUMMY_ENV, "AWS_ENDPOINT_URL", *_DROPPED)}
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for name in _DROPPED:
        os.environ.pop(name, None)
    os.environ.update(DUMMY_ENV | {"AWS_ENDPOINT_URL": endpoint})
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    try:
        yield S3Server(endpoint=endpoint, client=client)
    finally:
        from annopull._storage.s3 import close_clients

        close_clients()
        client.close()
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
