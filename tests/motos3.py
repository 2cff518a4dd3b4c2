"""moto's S3 server on loopback, with a bucket ``lake``, for the tests of S3 lakes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
from loopback import free_port
from moto.server import ThreadedMotoServer


def s3_client(env: dict[str, str]) -> Any:
    """A boto3 S3 client of the server in ``env``, as its administrator."""
    return admin_client("s3", env)


def iam_client(env: dict[str, str]) -> Any:
    """A boto3 IAM client of the server in ``env`` (users and policies), as its administrator."""
    return admin_client("iam", env)


def admin_client(service: str, env: dict[str, str]) -> Any:
    """A boto3 client of ``service`` on the server in ``env``, as its administrator."""
    return boto3.client(
        service,
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


@contextmanager
def moto_s3() -> Iterator[tuple[dict[str, str], ThreadedMotoServer]]:
    """A running server and the AWS environment that reaches it; stopped on exit (a test
    may stop it before: stopping twice is harmless)."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    try:
        s3_client(env).create_bucket(Bucket="lake")
        yield env, server
    finally:
        server.stop()
