"""What a Greengrass v1 function finds around it (contract section 5): its ARN, the system functions'
ARNs, the daemon port and credential provider, encoding, region and thing, on top of the native
worker environment; and the token a long-lived v1 function's single worker proves itself with.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.acl import function_identity
from gateway.credentials import load_credentials
from gateway.greengrass.arns import (
    DEFAULT_REGION,
    GGC_VERSION,
    INTERFACE_VERSION,
    LOCAL_ACCOUNT,
    ROUTER_ARN,
    SECRETS_ARN,
    SHADOW_ARN,
    credential_provider_uri,
    function_arn_for,
    parse_function_arn,
)

if TYPE_CHECKING:
    from gateway.config import Function

PINNED_TOKEN_LABEL = b"millgate greengrass-v1 long-lived worker token"


def region_of(function: Function) -> str:
    """The function's AWS region: its ARN's, else the gateway's (AWS_REGION / AWS_DEFAULT_REGION)."""
    if function.arn:
        return parse_function_arn(function.arn).region
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION


def my_function_arn(function: Function, version: str) -> str:
    return function_arn_for(function.name, function.arn, version, region_of(function))


def v1_environment(
    base: dict[str, str], function: Function, version: str, thing: str, group_id: str, group_name: str | None = None
) -> dict[str, str]:
    """The worker environment of a v1 function, without its token (added per worker)."""
    arn = parse_function_arn(my_function_arn(function, version))
    env = {
        **base,
        "PATH": f"{base['HOME']}:{base['PATH']}",  # v1 put the function's directory (/lambda) on PATH
        "MY_FUNCTION_ARN": str(arn),
        "ROUTER_FUNCTION_ARN": ROUTER_ARN,
        "SHADOW_FUNCTION_ARN": SHADOW_ARN,
        "SECRETS_MANAGER_FUNCTION_ARN": SECRETS_ARN,
        "GG_DAEMON_PORT": str(function.daemon_port),
        "ENCODING_TYPE": function.encoding,
        "GGC_MAX_INTERFACE_VERSION": INTERFACE_VERSION,
        "GGC_VERSION": GGC_VERSION,
        "AWS_REGION": arn.region,
        "AWS_DEFAULT_REGION": arn.region,
        "AWS_IOT_THING_NAME": thing,
        "AWS_IOT_THING_ARN": f"arn:{arn.partition}:iot:{arn.region}:{arn.account or LOCAL_ACCOUNT}:thing/{thing}",
        "AWS_GREENGRASS_GROUP_NAME": group_name or group_id,
        "GROUP_ID": group_id,
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": credential_provider_uri(function.daemon_port),
        # resources are at their host paths (no container), so prefix + DestinationPath finds them
        "AWS_GG_RESOURCE_PREFIX": base.get("AWS_GG_RESOURCE_PREFIX", "/"),
    }
    env.update(function.environment)
    return env


def pinned_token(credentials_dir: Path, function: str) -> str:
    """A long-lived v1 function runs one worker that supervisord starts, not the core: the core and
    that worker both derive its token from the function's own broker secret, which only the
    function's uid and root can read."""
    secret = load_credentials(credentials_dir, function_identity(function)).password.encode()
    return hmac.new(secret, PINNED_TOKEN_LABEL, hashlib.sha256).hexdigest()
