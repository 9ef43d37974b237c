"""A short-lived child process that downloads one model object from S3 with boto3 and exits: boto3
costs ~40 MB resident, so the process deploying functions never imports it.

Usage: python -m gateway.model_fetch --uri s3://B/K --file F [--if-none-match ETAG] [--region R] [--endpoint-url U]
Exit 0 with the object's ETag on stdout once F holds the whole object; 3 when the object still has
ETAG (F untouched); otherwise 1 with the reason on stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway.atomic_file import written_whole

NOT_MODIFIED = 3


def split_uri(uri: str) -> tuple[str, str]:
    """'s3://bucket/dir/model.tar.gz' -> ('bucket', 'dir/model.tar.gz')."""
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not uri.startswith("s3://") or not bucket or not key:
        raise ValueError(f"{uri!r} is not s3://bucket/key")
    return bucket, key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="millgate-model-fetch")
    parser.add_argument("--uri", required=True)
    parser.add_argument("--file", required=True)
    parser.add_argument("--if-none-match", default=None)
    parser.add_argument("--region", default=None)
    parser.add_argument("--endpoint-url", default=None)
    args = parser.parse_args(argv)
    try:
        bucket, key = split_uri(args.uri)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 1

    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.client("s3", region_name=args.region, endpoint_url=args.endpoint_url)
    try:
        request = {"Bucket": bucket, "Key": key}
        if args.if_none_match:
            request["IfNoneMatch"] = args.if_none_match
        response = client.get_object(**request)
        with written_whole(Path(args.file)) as sink:
            for chunk in response["Body"].iter_chunks(1024 * 1024):
                sink.write(chunk)
    except ClientError as exc:
        if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 304:
            return NOT_MODIFIED
        print(f"{args.uri}: {exc}", file=sys.stderr)
        return 1
    except (BotoCoreError, OSError) as exc:
        print(f"{args.uri}: {exc}", file=sys.stderr)
        return 1
    print(response.get("ETag", ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
