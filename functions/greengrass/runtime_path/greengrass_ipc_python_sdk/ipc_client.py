"""The client of the Greengrass v1 core's local HTTP API: a caller posts work to a function and reads
its result; a function's runtime gets its work and posts results. Every request carries the worker's
token; every transport failure is raised as IPCException.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

from greengrass_common.env_vars import AUTH_TOKEN, GG_DAEMON_PORT

HEADER_CLIENT_CONTEXT = "X-Amz-Client-Context"
HEADER_INVOCATION_ID = "X-Amz-InvocationId"
HEADER_INVOCATION_TYPE = "X-Amz-Invocation-Type"
HEADER_FUNCTION_ERROR = "X-Amz-Function-Error"
# millgate's addition (a v1 core ignored unknown headers): this worker exits after this result
HEADER_WORKER_EXITING = "X-Millgate-Worker-Exiting"
API_VERSION = "2016-11-01"
ROUTER_ARN = "arn:aws:lambda:::function:GGRouter"

Payload = bytes | bytearray | str | None


class IPCException(Exception):
    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status  # the HTTP status when the core answered with an error


class WorkItem:
    def __init__(self, invocation_id: str, payload: bytes, client_context: str):
        self.invocation_id = invocation_id
        self.payload = payload
        self.client_context = client_context


class GetWorkResultOutput:
    def __init__(self, payload: bytes, func_err: str):
        self.payload = payload
        self.func_err = func_err


def _as_bytes(payload: Payload) -> bytes:
    if payload is None:
        return b""
    if isinstance(payload, str):
        return payload.encode("utf-8")
    return bytes(payload)


class IPCClient:
    def __init__(self, endpoint: str = "localhost", port: int | None = None):
        self.endpoint = endpoint
        self.port = int(port or GG_DAEMON_PORT or 8000)

    def _url(self, function_arn: str, suffix: str = "") -> str:
        return f"http://{self.endpoint}:{self.port}/{API_VERSION}/functions/{function_arn}{suffix}"

    def _request(
        self, method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[bytes, dict[str, str]]:
        request = urllib.request.Request(url, data=body, method=method)
        request.add_header("Authorization", AUTH_TOKEN or "")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request) as response:
                return response.read(), {k.lower(): v for k, v in response.headers.items()}
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", errors="replace")
            raise IPCException(f"{method} {url}: HTTP {exc.code} {detail}", status=exc.code) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise IPCException(f"{method} {url}: {exc}") from None

    # ---- a caller's side ------------------------------------------------------------------------

    def post_work(
        self,
        function_arn: str,
        payload: Payload,
        client_context: bytes | str | None,
        invocation_type: str = "RequestResponse",
    ) -> str:
        context = client_context.decode() if isinstance(client_context, bytes) else (client_context or "")
        _, headers = self._request(
            "POST",
            self._url(function_arn),
            _as_bytes(payload),
            {HEADER_CLIENT_CONTEXT: context, HEADER_INVOCATION_TYPE: invocation_type},
        )
        return headers.get(HEADER_INVOCATION_ID.lower(), "")

    def get_work_result(self, function_arn: str, invocation_id: str) -> GetWorkResultOutput:
        if function_arn == ROUTER_ARN:
            return GetWorkResultOutput(b"", "")  # the router answers nothing worth a round trip
        body, headers = self._request("GET", self._url(function_arn), None, {HEADER_INVOCATION_ID: invocation_id})
        return GetWorkResultOutput(body, headers.get(HEADER_FUNCTION_ERROR.lower(), ""))

    # ---- a function runtime's side --------------------------------------------------------------

    def get_work(self, function_arn: str) -> WorkItem:
        body, headers = self._request("GET", self._url(function_arn, "/work"))
        return WorkItem(
            headers.get(HEADER_INVOCATION_ID.lower(), ""), body, headers.get(HEADER_CLIENT_CONTEXT.lower(), "")
        )

    def post_work_result(self, function_arn: str, work_item: WorkItem) -> None:
        self._request(
            "POST",
            self._url(function_arn, "/work"),
            _as_bytes(work_item.payload),
            {HEADER_INVOCATION_ID: work_item.invocation_id},
        )

    def post_handler_err(
        self, function_arn: str, invocation_id: str, handler_err: str, worker_exiting: bool = False
    ) -> None:
        headers = {HEADER_INVOCATION_ID: invocation_id, HEADER_FUNCTION_ERROR: "Handled"}
        if worker_exiting:
            headers[HEADER_WORKER_EXITING] = "true"
        self._request(
            "POST", self._url(function_arn, "/work"), json.dumps({"errorMessage": handler_err}).encode("utf-8"), headers
        )

    def get_workers_health(self) -> bytes:
        url = f"http://{self.endpoint}:{self.port}/{API_VERSION}/health/workers"
        return self._request("GET", url)[0]

    def put_started(self, function_arn: str) -> None:
        # millgate's addition, before the handler's import (which a long-lived function's loop may never
        # end): the core knows this worker's pid, and the worker counts as running, from now on
        body = {"ProcessId": os.getpid()}
        self._request("PUT", self._url(function_arn, "/started"), json.dumps(body).encode("utf-8"))

    def put_initialization_result(self, function_arn: str, func_error: str | None = None) -> None:
        # ProcessId is millgate's addition (a v1 core ignored unknown keys): the health API shows it
        body = {"Success": func_error is None, "Response": func_error or "", "ProcessId": os.getpid()}
        self._request("PUT", self._url(function_arn, "/initialized"), json.dumps(body).encode("utf-8"))
