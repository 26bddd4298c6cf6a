"""The S3 client the benchmarks use against their own local moto server.

The credentials are moto's throwaway values for a server that lives as long as one benchmark.
"""

from __future__ import annotations

from typing import Any


def bench_s3_client(endpoint: str) -> Any:
    """A boto3 S3 client for the moto server at ``endpoint`` (``http://127.0.0.1:<port>``)."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    )
