"""The Greengrass v1 runtime's environment, read once at import as the v1 core's module did."""

import os

AUTH_TOKEN = os.environ.get("AWS_CONTAINER_AUTHORIZATION_TOKEN")
MY_FUNCTION_ARN = os.environ.get("MY_FUNCTION_ARN")
SHADOW_FUNCTION_ARN = os.environ.get("SHADOW_FUNCTION_ARN")
ROUTER_FUNCTION_ARN = os.environ.get("ROUTER_FUNCTION_ARN")
SECRETS_MANAGER_FUNCTION_ARN = os.environ.get("SECRETS_MANAGER_FUNCTION_ARN")
GG_DAEMON_PORT = os.environ.get("GG_DAEMON_PORT", "8000")
GGC_MAX_INTERFACE_VERSION = os.environ.get("GGC_MAX_INTERFACE_VERSION")
ENCODING_TYPE = os.environ.get("ENCODING_TYPE")
