"""The OPC-UA adapter's pure parts: status code -> quality, JSON <-> Variant conversion by data type,
and the adapter file's OPC-UA checks (addresses, one deadband, topics used twice)."""

from __future__ import annotations

import pytest
from asyncua import ua
from hypothesis import given
from hypothesis import strategies as st

from adapters.base.tag import Quality
from adapters.opcua.quality import quality_of, status_reason
from adapters.opcua.variants import INTEGER_RANGES, reading_of, to_variant
from gateway.adapter_config import OpcuaAdapter
from gateway.config_loader import ConfigInvalid, load_config


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_quality_follows_the_status_code_severity_bits(code: int) -> None:
    expected = {0: Quality.GOOD, 1: Quality.UNCERTAIN}.get(code >> 30, Quality.BAD)
    assert quality_of(code) == expected
    assert status_reason(code)


@given(st.sampled_from(sorted(INTEGER_RANGES, key=int)), st.integers(min_value=-(2**65), max_value=2**65))
def test_integer_writes_are_range_checked_for_their_type(vtype: ua.VariantType, value: int) -> None:
    low, high = INTEGER_RANGES[vtype]
    if low <= value <= high:
        assert to_variant(value, vtype) == ua.Variant(value, vtype)
    else:
        with pytest.raises(ValueError, match="out of the"):
            to_variant(value, vtype)


def test_readings_keep_uncertain_values_and_drop_bad_ones() -> None:
    uncertain = reading_of(ua.DataValue(ua.Variant(1.5), ua.StatusCode(ua.StatusCodes.UncertainLastUsableValue)))
    assert (
        uncertain.quality == Quality.UNCERTAIN
        and uncertain.value == 1.5
        and "UncertainLastUsableValue" in (uncertain.reason or "")
    )
    bad = reading_of(ua.DataValue(ua.Variant(9.0), ua.StatusCode(ua.StatusCodes.BadSensorFailure)))
    assert bad.quality == Quality.BAD and bad.value is None and "BadSensorFailure" in (bad.reason or "")
    assert reading_of(ua.DataValue(ua.Variant(float("nan")))).value is None


def test_array_and_scalar_shapes_must_match_the_value_rank() -> None:
    assert to_variant([1, 2], ua.VariantType.Int32, 1).Value == [1, 2]
    with pytest.raises(ValueError, match="send a JSON list"):
        to_variant(1, ua.VariantType.Int32, 1)
    with pytest.raises(ValueError, match="not a list"):
        to_variant([1], ua.VariantType.Int32, -1)


BASE = {"name": "line2", "protocol": "opcua", "endpoint": "opc.tcp://10.0.3.5:4840/"}


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        ([{"name": "t", "node_id": "Line2.Temperature"}], "should match pattern"),
        ([{"name": "t", "node_id": "ns=2;s=T", "deadband": 1, "deadband_percent": 5}], "one deadband"),
        ([{"name": "t", "node_id": "ns=2;s=T", "browse_path": "2:Line2/2:T"}], "exactly one of"),
        ([{"name": "t", "node_id": "ns=2;s=T", "mode": "poll", "sampling_ms": 0}], "sampling_ms >= 10"),
    ],
)
def test_invalid_nodes_are_refused_with_the_reason(nodes: list[dict], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OpcuaAdapter.model_validate({**BASE, "nodes": nodes})


def test_a_topic_used_by_two_nodes_or_a_method_is_reported(tmp_path) -> None:
    (tmp_path / "adapters").mkdir()
    (tmp_path / "gateway.toml").write_text('[gateway]\nthing_name = "gw"\n')
    (tmp_path / "adapters" / "line2.toml").write_text(
        """
name = "line2"
protocol = "opcua"
endpoint = "opc.tcp://127.0.0.1:4840/"

[[nodes]]
name = "a"
node_id = "ns=2;s=A"

[[nodes]]
name = "b"
node_id = "ns=2;s=B"
topic = "line2/a"

[[methods]]
name = "reset"
object_id = "ns=2;s=L"
method_id = "ns=2;s=L.Reset"
topic = "line2/a/set"
"""
    )
    with pytest.raises(ConfigInvalid) as caught:
        load_config(tmp_path)
    text = str(caught.value)
    assert "nodes[1].topic: topic 'line2/a' is also used by nodes[0]" in text
    assert "methods[0].topic: topic 'line2/a/set' is also used by nodes[0]" in text


def test_a_deadband_that_is_not_finite_is_refused_with_file_and_key(tmp_path) -> None:
    (tmp_path / "adapters").mkdir()
    (tmp_path / "gateway.toml").write_text('[gateway]\nthing_name = "gw"\n')
    (tmp_path / "adapters" / "line2.toml").write_text(
        'name = "line2"\nprotocol = "opcua"\nendpoint = "opc.tcp://127.0.0.1:4840/"\n\n'
        '[[nodes]]\nname = "a"\nnode_id = "ns=2;s=A"\ndeadband = inf\n'
    )
    with pytest.raises(ConfigInvalid) as caught:
        load_config(tmp_path)
    assert "line2.toml: nodes[0].deadband: input should be a finite number (got inf)" in str(caught.value)
