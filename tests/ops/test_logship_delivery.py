"""What logship does with each line it hands to CloudWatch Logs (moto's server): broker and supervisord
lines of a gateway east of UTC arrive at the time they were logged, lines CloudWatch refuses are counted
and logged rather than reported as sent, and batches a child sent before it was killed are not sent again.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from gateway import cloudwatch_ship
from gateway.cloudwatch_ship import Shipper
from gateway.config import CloudWatchSection
from gateway.paths import GatewayPaths
from tests.fixtures.gateway import free_port, wait_until

GATEWAY = """
[gateway]
thing_name = "{thing}"
status_interval_s = 0.5

[logging.cloudwatch]
endpoint_url = "http://127.0.0.1:{port}"
region = "us-east-1"
flush_interval_s = 0.5
"""


@pytest.fixture
def moto_port(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield port
    server.stop()


def _events(port: int, group: str, stream: str) -> list[dict]:
    logs = boto3.client("logs", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1")
    try:
        answer = logs.get_log_events(logGroupName=group, logStreamName=stream, startFromHead=True, limit=10_000)
    except logs.exceptions.ResourceNotFoundException:
        return []
    return list(answer["events"])


def _messages(port: int, group: str, stream: str) -> list[str]:
    return [e["message"] for e in _events(port, group, stream)]


def test_broker_and_supervisord_lines_of_a_gateway_east_of_utc_arrive_stamped_when_logged(
    gateway_factory, moto_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # mosquitto and supervisord stamp their lines in local time (UTC+9 here, beyond CloudWatch's two
    # hours of tolerance for the future): read as UTC, CloudWatch would refuse every one of them
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    gw = gateway_factory(GATEWAY.format(thing="cw-tokyo", port=moto_port), expect=("broker", "core", "logship"))
    group = "/millgate/cw-tokyo"
    client_id = f"tokyo-{uuid.uuid4().hex[:8]}"
    gw.client("operator", client_id)
    logged_at_ms = time.time() * 1000

    def arrived(stream: str, text: str) -> list[dict]:
        return [e for e in _events(moto_port, group, stream) if text in e["message"]]

    wait_until(lambda: arrived("system/broker", client_id), 30, "the broker's line in CloudWatch", interval_s=0.3)
    wait_until(lambda: arrived("system/supervisord", "spawned"), 30, "supervisord's lines", interval_s=0.3)
    (broker_line,) = arrived("system/broker", f"as {client_id}")
    assert abs(broker_line["timestamp"] - logged_at_ms) < 5_000, broker_line
    for event in arrived("system/supervisord", "spawned"):
        assert abs(event["timestamp"] - logged_at_ms) < 60_000, event
    assert "event=lines-rejected" not in gw.paths.component_log("logship").read_text()


def _shipper(base: Path, port: int, **settings: object) -> Shipper:
    paths = GatewayPaths.resolve(base / "etc", base / "state", base / "log")
    (paths.log_dir / "system").mkdir(parents=True)
    cloudwatch = CloudWatchSection(endpoint_url=f"http://127.0.0.1:{port}", region="us-east-1", **settings)
    return Shipper(paths, cloudwatch, f"gw-{uuid.uuid4().hex[:8]}")


def _utc_stamp(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + ".000Z"


def test_lines_cloudwatch_refuses_are_counted_and_logged_not_reported_as_sent(
    tmp_path: Path, moto_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    shipper = _shipper(tmp_path, moto_port)
    now = time.time()
    (shipper.paths.log_dir / "system" / "core.log").write_text(
        f"{_utc_stamp(now)} INFO core: now\n{_utc_stamp(now + 1)} INFO core: also now\n"
        f"{_utc_stamp(now + 3 * 3600)} INFO core: three hours ahead\n"
    )
    shipper.collect()
    with caplog.at_level(logging.INFO, logger="gateway.cloudwatch_ship"):
        assert shipper.flush()
    assert _messages(moto_port, shipper.log_group, "system/core") == [
        f"{_utc_stamp(now)} INFO core: now",
        f"{_utc_stamp(now + 1)} INFO core: also now",
    ]
    assert shipper.sent == 2 and len(shipper.buffer) == 0  # the refused line is done with, not sent
    (warning,) = [r.getMessage() for r in caplog.records if "event=lines-rejected" in r.getMessage()]
    assert "streams=system/core:1" in warning and shipper.rejected == 1


class _SlowStreamProxy:
    """An HTTP proxy in front of moto that holds back, unanswered, every request naming `slow_stream`
    while `hold` is set: a CloudWatch that takes one stream's batch and hangs on the next."""

    def __init__(self, upstream_port: int, slow_stream: str):
        self.hold = threading.Event()
        self.released = threading.Event()
        marker = json.dumps(slow_stream).encode()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if proxy.hold.is_set() and marker in body:
                    proxy.released.wait(60)
                    self.close_connection = True
                    return  # never forwarded: only what was answered reached CloudWatch
                upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
                upstream.request("POST", self.path, body, dict(self.headers))
                answer = upstream.getresponse()
                data = answer.read()
                upstream.close()
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ("content-length", "connection", "transfer-encoding", "date", "server"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


def test_batches_a_child_sent_before_it_was_killed_are_not_sent_again(
    tmp_path: Path, moto_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = _SlowStreamProxy(moto_port, "system/slow")
    monkeypatch.setattr(cloudwatch_ship, "CHILD_TIMEOUT_S", 6.0)
    try:
        shipper = _shipper(tmp_path, proxy.port, request_timeout_s=120)
        now = time.time()
        fast = [f"{_utc_stamp(now)} INFO fast: line {i}" for i in range(3)]
        slow = [f"{_utc_stamp(now)} INFO slow: line {i}" for i in range(2)]
        system = shipper.paths.log_dir / "system"
        (system / "fast.log").write_text("".join(f"{line}\n" for line in fast))
        (system / "slow.log").write_text("".join(f"{line}\n" for line in slow))
        shipper.collect()

        proxy.hold.set()
        started = time.monotonic()
        assert not shipper.flush()  # the child sent system/fast, then hung on system/slow and was killed
        assert time.monotonic() - started < 30
        assert _messages(moto_port, shipper.log_group, "system/fast") == fast
        assert shipper.sent == 3 and list(shipper.buffer.pending()) == ["system/slow"]
        saved = json.loads(shipper.offsets_file.read_text())
        assert saved["fast"]["position"] == (system / "fast.log").stat().st_size

        proxy.hold.clear()
        assert shipper.flush()
        for stream, lines in (("system/fast", fast), ("system/slow", slow)):
            assert Counter(_messages(moto_port, shipper.log_group, stream)) == Counter(lines), stream
    finally:
        proxy.close()


def test_a_restart_keeps_each_logs_head_fingerprint_in_the_offsets(tmp_path: Path, moto_port: int) -> None:
    # without the head, a log whose inode a rotation gave to a new file resumed at the old offset
    first = _shipper(tmp_path, moto_port)
    (first.paths.log_dir / "system" / "core.log").write_text(f"{_utc_stamp(time.time())} INFO core: one\n")
    first.collect()
    assert first.flush()
    saved = json.loads(first.offsets_file.read_text())
    assert saved["core"]["head"], saved
    # logship restarts; nothing new is written to core.log, so nothing of it is acknowledged again
    second = Shipper(first.paths, first.settings, "again")
    second.collect()
    second.flush()
    second._save_offsets()
    assert json.loads(second.offsets_file.read_text())["core"]["head"] == saved["core"]["head"]
