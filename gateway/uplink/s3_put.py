"""A short-lived child process that uploads one file to S3 with boto3 (multipart above a threshold)
and exits: boto3 costs ~40 MB resident, so the uplink itself never imports it.

Usage: python -m gateway.uplink.s3_put --bucket B --key K --file F [--region R] [--endpoint-url U]
Exit 0 when S3 confirmed the object; otherwise 1 with the reason on stderr.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="millgate-s3-put")
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--file", required=True)
    parser.add_argument("--region", default=None)
    parser.add_argument("--endpoint-url", default=None)
    parser.add_argument("--multipart-threshold", type=int, default=8 * 1024 * 1024)
    args = parser.parse_args(argv)

    import boto3
    from boto3.s3.transfer import TransferConfig
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client = boto3.client("s3", region_name=args.region, endpoint_url=args.endpoint_url)
        config = TransferConfig(
            multipart_threshold=args.multipart_threshold,
            multipart_chunksize=max(args.multipart_threshold, 5 * 1024 * 1024),
            use_threads=False,
        )
        client.upload_file(
            args.file, args.bucket, args.key, Config=config, ExtraArgs={"ContentType": "application/gzip"}
        )
    except (BotoCoreError, ClientError, OSError) as exc:
        print(f"s3://{args.bucket}/{args.key}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
