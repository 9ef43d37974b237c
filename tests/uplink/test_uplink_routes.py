"""Cloud to local routing, bulk batches to S3 (moto's server), and a damaged spool file."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import boto3

from gateway.status import supervisor_proxy
from tests.fixtures.gateway import REPO, wait_until
from tests.uplink.conftest import CloudBroker, local_publisher, publish_many
from tests.uplink.test_uplink_drain import GATEWAY, uplink_status


def test_cloud_messages_are_republished_to_their_local_target(uplink_gateway, cloud_broker: CloudBroker) -> None:
    cloud_broker.start()
    cloud = cloud_broker.subscriber("plant/#")
    downlink = '\n[[subscriptions]]\nsource = "cloud"\ntarget = "shadow"\ntopic = "commands/#"\n'
    gw = uplink_gateway(GATEWAY + downlink + cloud_broker.toml())
    got: list[tuple[str, bytes]] = []
    core = gw.client("core")
    core.on_message = lambda _c, _u, m: got.append((m.topic, m.payload))
    core.subscribe("commands/#", qos=1)
    wait_until(lambda: uplink_status(gw).get("cloud", {}).get("connected"), 10, "the cloud link")
    assert cloud.client is not None
    for i in range(20):
        cloud.client.publish(f"commands/press{i % 2}", str(i).encode(), qos=1)
    wait_until(lambda: len(got) >= 20, 10, "the commands on the local broker")
    assert got == [(f"commands/press{i % 2}", str(i).encode()) for i in range(20)]


def test_bulk_topics_land_in_s3_as_gzip_json_lines_under_the_configured_keys(
    uplink_gateway, cloud_broker: CloudBroker, s3_server: str
) -> None:
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    s3.create_bucket(Bucket="plant-data")
    cloud_broker.start()
    cloud = cloud_broker.subscriber("plant/#")
    bulk = f"""
[bulk]
bucket = "plant-data"
prefix = "raw/{{thing}}/{{yyyy}}/{{mm}}/{{dd}}/"
topics = ["plant/vibration/#"]
max_batch_age_s = 0.5
endpoint_url = "{s3_server}"
region = "us-east-1"
"""
    gw = uplink_gateway(GATEWAY + bulk + cloud_broker.toml())
    vibration = [(f"plant/vibration/m{i % 3}", json.dumps({"rms": i}).encode()) for i in range(300)]
    binary = [("plant/vibration/raw", bytes(range(256)))]
    publish_many(local_publisher(gw), vibration + binary + [("plant/temp", b"21.5")])

    def objects() -> list[str]:
        return [o["Key"] for o in s3.list_objects_v2(Bucket="plant-data").get("Contents", [])]

    wait_until(lambda: objects(), 20, "a bulk batch in S3", interval_s=0.2)
    wait_until(lambda: uplink_status(gw)["bulk"]["records_pending"] == 0, 10, "no bulk records pending")
    records = []
    for key in objects():
        assert key.startswith("raw/test-gw/") and key.endswith(".jsonl.gz"), key
        assert len(key.split("/")) == 6, key  # raw/thing/yyyy/mm/dd/file
        body = s3.get_object(Bucket="plant-data", Key=key)["Body"].read()
        records += [json.loads(line) for line in gzip.decompress(body).splitlines()]
    assert [(r["topic"], r["payload"].encode()) for r in records if "payload" in r] == vibration
    (raw,) = [r for r in records if "payload_b64" in r]
    assert raw["topic"] == "plant/vibration/raw"
    wait_until(lambda: cloud.snapshot() == [("plant/temp", b"21.5")], 10, "the non-bulk message in the cloud")
    assert not list((gw.state_dir / "uplink" / "bulk").glob("batch-*")), "uploaded batch files are removed"


def test_s3_put_uses_multipart_for_big_batches(s3_server: str, tmp_path: Path) -> None:
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    s3.create_bucket(Bucket="plant-data")
    big = tmp_path / "big.jsonl.gz"
    big.write_bytes(b"x" * (11 * 1024 * 1024))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.uplink.s3_put",
            "--bucket",
            "plant-data",
            "--key",
            "k/big.jsonl.gz",
            "--file",
            str(big),
            "--endpoint-url",
            s3_server,
            "--region",
            "us-east-1",
            "--multipart-threshold",
            str(5 * 1024 * 1024),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    head = s3.head_object(Bucket="plant-data", Key="k/big.jsonl.gz")
    assert head["ContentLength"] == 11 * 1024 * 1024
    assert head["ETag"].strip('"').endswith("-3"), "three parts of 5 MB at most"


def test_a_damaged_spool_stops_the_uplink_with_the_path_and_leaves_the_data(
    uplink_gateway, cloud_broker: CloudBroker
) -> None:
    cloud_broker.start()
    gw = uplink_gateway(GATEWAY + cloud_broker.toml())
    supervisor_proxy(gw.paths).supervisor.stopProcess("uplink")
    spool = gw.state_dir / "uplink" / "spool.db"
    damaged = b"not a database at all" * 200
    spool.write_bytes(damaged)
    result = subprocess.run(
        [sys.executable, "-m", "gateway.uplink", "--config", str(gw.config_dir), "--state", str(gw.state_dir)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert result.returncode == 3
    assert str(spool) in result.stdout and "damaged" in result.stdout and "Move it aside" in result.stdout
    assert spool.read_bytes() == damaged
