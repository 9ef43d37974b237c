"""`millgate bundle build CONFIG_DIR --out FILE` and `millgate bundle push FILE --bucket B --key K`:
make a deployment bundle and upload it, printing the desired state that deploys it on a gateway.

The upload runs in the short-lived gateway.uplink.s3_put child, like every boto3 call.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from gateway.cli_support import EXIT_FAILED, EXIT_INVALID, EXIT_OK


def _desired(kind: str, version: str, bucket: str, key: str, sha256: str) -> str:
    request = {"version": version, "bucket": bucket, "key": key, "sha256": sha256}
    return json.dumps({"state": {"desired": {kind: request}}})


def cmd_build(args: argparse.Namespace) -> int:
    from gateway.config_loader import ConfigInvalid
    from gateway.deploy_bundle import build_bundle
    from gateway.deploy_job import sha256_file

    try:
        build_bundle(args.config_dir, args.out)
    except ConfigInvalid as exc:
        print(f"millgate bundle build: {args.config_dir}: invalid, no bundle written:\n{exc}", file=sys.stderr)
        return EXIT_INVALID
    except OSError as exc:
        print(f"millgate bundle build: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{args.out}  sha256 {sha256_file(args.out)}")
    return EXIT_OK


def cmd_push(args: argparse.Namespace) -> int:
    from gateway.deploy_job import VERSION, sha256_file

    kind = "package" if args.file.suffix == ".deb" else "deployment"
    if kind == "package":
        from gateway.package_version import PackageUnreadable, deb_version, same_release

        try:
            own = deb_version(args.file)
        except PackageUnreadable as exc:
            print(f"millgate bundle push: {exc}", file=sys.stderr)
            return EXIT_INVALID
        if args.version and args.version != own and not same_release(own, args.version):
            print(f"millgate bundle push: {args.file} is millgate {own}, not --version {args.version}", file=sys.stderr)
            return EXIT_INVALID
        version = args.version or own
    else:
        version = args.version or _bundle_version(args.file)
    if not VERSION.match(version):
        print(f"millgate bundle push: --version {version!r}: use A-Z a-z 0-9 . _ + ~ : -", file=sys.stderr)
        return EXIT_INVALID
    try:
        digest = sha256_file(args.file)
    except OSError as exc:
        print(f"millgate bundle push: {exc}", file=sys.stderr)
        return EXIT_FAILED
    argv = [sys.executable, "-m", "gateway.uplink.s3_put", "--bucket", args.bucket, "--key", args.key]
    argv += ["--file", str(args.file)]
    if args.region:
        argv += ["--region", args.region]
    if args.endpoint_url:
        argv += ["--endpoint-url", args.endpoint_url]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"millgate bundle push: {done.stderr.strip()}", file=sys.stderr)
        return EXIT_FAILED
    print(f"uploaded s3://{args.bucket}/{args.key}; set this as each gateway's desired shadow state:", file=sys.stderr)
    print(_desired(kind, version, args.bucket, args.key, digest))
    return EXIT_OK


def _bundle_version(file: Path) -> str:
    """A bundle's version defaults to its digest."""
    from gateway.deploy_job import sha256_file

    return sha256_file(file)[:12]


def add_bundle_parser(verbs: Any, common: argparse.ArgumentParser) -> None:
    parser = verbs.add_parser("bundle", help="build and upload cloud deployment bundles", parents=[common])
    actions = parser.add_subparsers(dest="bundle_verb", required=True, metavar="ACTION")
    build = actions.add_parser("build", help="pack a config dir (validated first) into a tar.gz", parents=[common])
    build.add_argument("config_dir", type=Path, metavar="CONFIG_DIR")
    build.add_argument("--out", type=Path, required=True, metavar="FILE")
    build.set_defaults(handler=cmd_build)
    push = actions.add_parser(
        "push",
        help="upload a bundle (or a millgate .deb) to S3 and print the desired state to set",
        parents=[common],
    )
    push.add_argument("file", type=Path, metavar="FILE")
    push.add_argument("--bucket", required=True)
    push.add_argument("--key", required=True)
    push.add_argument("--version", default=None, help="default: a .deb's own Version, a bundle's sha256 (12 hex)")
    push.add_argument("--region", default=None)
    push.add_argument("--endpoint-url", default=None, metavar="URL")
    push.set_defaults(handler=cmd_push)
