"""Greengrass v1 names: the system functions' ARNs, Lambda function ARNs (parsed and built), thing
ARNs, and the fixed values of the v1 contract (../shared/greengrass-v1-contract.md, sections 2 and 5).

Pure functions only: it reads no files and opens no sockets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

API_VERSION_PREFIX = "/2016-11-01"
DEFAULT_DAEMON_PORT = 8000
INTERFACE_VERSION = "1.5"  # what greengrasssdk 1.6.1 declares; GGC 1.11 exported the same
GGC_VERSION = "1.11.6"
LOCAL_ACCOUNT = "000000000000"  # for ARNs of functions that were never in an AWS account
DEFAULT_REGION = "us-east-1"

ROUTER_ARN = "arn:aws:lambda:::function:GGRouter"
SHADOW_ARN = "arn:aws:lambda:::function:GGShadowService"
SECRETS_ARN = "arn:aws:lambda:::function:GGSecretManager:1"

# the core's own functions as they appear in function definitions and subscriptions
SYSTEM_FUNCTION = re.compile(
    r"^arn:aws[a-z-]*:lambda:::function:(?P<name>GG[A-Za-z]+)(:(?P<qualifier>[A-Za-z0-9_$-]+))?$"
)

FUNCTION_ARN = re.compile(
    r"^arn:(?P<partition>aws(-[a-z]+)*):lambda:(?P<region>[a-z]{2}(-[a-z]+)+-\d+):(?P<account>[0-9]{12}):"
    r"function:(?P<name>[A-Za-z0-9_-]{1,64})(:(?P<qualifier>\$LATEST|[A-Za-z0-9_-]{1,128}))?$"
)
THING_ARN = re.compile(r"^arn:aws[a-z-]*:iot:[a-z0-9-]+:[0-9]{12}:thing/(?P<name>[A-Za-z0-9:_-]{1,128})$")


class ArnError(ValueError):
    """Not an ARN of the kind expected; the message quotes it."""


@dataclass(frozen=True)
class FunctionArn:
    partition: str
    region: str
    account: str
    name: str
    qualifier: str | None

    @property
    def unqualified(self) -> str:
        return f"arn:{self.partition}:lambda:{self.region}:{self.account}:function:{self.name}"

    def qualified(self, qualifier: str | None) -> str:
        return f"{self.unqualified}:{qualifier}" if qualifier else self.unqualified

    def __str__(self) -> str:
        return self.qualified(self.qualifier)


def parse_function_arn(text: str) -> FunctionArn:
    match = FUNCTION_ARN.fullmatch(text)
    if match is None:
        raise ArnError(
            f"{text!r} is not a Lambda function ARN (arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER])"
        )
    return FunctionArn(match["partition"], match["region"], match["account"], match["name"], match["qualifier"] or None)


def system_function_name(text: str) -> str | None:
    """'GGRouter', 'GGShadowService', ... for the core's own function ARNs; None for anything else."""
    match = SYSTEM_FUNCTION.fullmatch(text)
    return match["name"] if match else None


def parse_thing_arn(text: str) -> str:
    """The thing name in an AWS IoT thing ARN."""
    match = THING_ARN.fullmatch(text)
    if match is None:
        raise ArnError(f"{text!r} is not an AWS IoT thing ARN (arn:aws:iot:REGION:ACCOUNT:thing/NAME)")
    return match["name"]


def local_function_arn(name: str, qualifier: str, region: str) -> str:
    """The ARN a function gets when its config names none: its own name in no account."""
    return f"arn:aws:lambda:{region}:{LOCAL_ACCOUNT}:function:{name}:{qualifier}"


def function_arn_for(name: str, configured: str | None, version: str, region: str) -> str:
    """MY_FUNCTION_ARN: the configured v1 ARN (qualified with the deployed version if it has no
    qualifier), else a local one."""
    if configured:
        arn = parse_function_arn(configured)
        return str(arn) if arn.qualifier else arn.qualified(version)
    return local_function_arn(name, version, region)


def credential_provider_uri(port: int) -> str:
    return f"http://localhost:{port}{API_VERSION_PREFIX}/credentialprovider/"
