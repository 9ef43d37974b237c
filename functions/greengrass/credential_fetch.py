"""Prints the gateway's AWS credentials from botocore's standard chain as one JSON line and exits:
the short-lived process behind the v1 credential provider, so botocore never stays in the core.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta

STATIC_LIFETIME = timedelta(hours=1)  # keys without an expiry are handed out for an hour at a time


def main() -> int:
    import botocore.session

    credentials = botocore.session.get_session().get_credentials()
    if credentials is None:
        print(
            "the gateway has no AWS credentials (environment, ~/.aws of the core's user, or an instance role)",
            file=sys.stderr,
        )
        return 1
    frozen = credentials.get_frozen_credentials()
    # refreshable credentials (an assumed role, an instance profile) carry their own expiry
    expiry = getattr(credentials, "_expiry_time", None)
    expires = expiry if isinstance(expiry, datetime) else datetime.now(UTC) + STATIC_LIFETIME
    print(
        json.dumps(
            {
                "AccessKeyId": frozen.access_key,
                "SecretAccessKey": frozen.secret_key,
                "Token": frozen.token or "",
                "Expiration": expires.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
