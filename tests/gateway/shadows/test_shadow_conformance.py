"""Conformance of the local shadow service with AWS IoT's documented shadow semantics, over MQTT on the
real broker. Each test cites the section of ../shared/aws-shadow-semantics.md (and its source) it checks.
"""

from __future__ import annotations

import json
import os
import signal
import time

from tests.fixtures.gateway import RunningGateway, wait_until
from tests.fixtures.shadows import ShadowClient

# ---- section 1: topics [S2] ---------------------------------------------------------------------


def test_update_is_answered_on_update_accepted(shadows: ShadowClient) -> None:
    """section 1: `<prefix>/update` is answered on `<prefix>/update/accepted` [S2]."""
    thing = shadows.thing()
    outcome, answer = shadows.request(thing, "update", {"state": {"reported": {"on": True}}})
    assert outcome == "accepted"
    assert answer["state"] == {"reported": {"on": True}}


def test_get_of_missing_shadow_is_404_on_get_rejected(shadows: ShadowClient) -> None:
    """sections 1 and 6: a get of no shadow is 404 `No shadow exists with name: ...` on /get/rejected [S3]."""
    thing = shadows.thing()
    outcome, answer = shadows.request(thing, "get")
    assert outcome == "rejected"
    assert answer["code"] == 404
    assert answer["message"] == f"No shadow exists with name: '{thing}'"


def test_named_shadow_lives_under_name_topics_apart_from_the_classic_one(shadows: ShadowClient) -> None:
    """section 1: named shadows use `$aws/things/<thing>/shadow/name/<name>/...` and are separate documents [S2]."""
    thing = shadows.thing()
    shadows.update(thing, {"state": {"desired": {"mode": "auto"}}}, name="config")
    named = shadows.get(thing, name="config")
    assert named["state"]["desired"] == {"mode": "auto"}
    outcome, answer = shadows.request(thing, "get")
    assert outcome == "rejected" and answer["code"] == 404
    outcome, answer = shadows.request(thing, "get", name="other")
    assert answer["message"] == "No shadow exists with name: 'other'"


def test_delete_of_missing_shadow_is_404_on_delete_rejected(shadows: ShadowClient) -> None:
    """sections 1 and 6: a delete of no shadow is 404 on /delete/rejected [S3]."""
    outcome, answer = shadows.request(shadows.thing(), "delete")
    assert outcome == "rejected" and answer["code"] == 404


# ---- section 2: request document [S1] ----------------------------------------------------------


def test_update_affects_only_the_fields_specified(shadows: ShadowClient) -> None:
    """section 2: state updates affect only the fields specified [S1]."""
    thing = shadows.thing()
    shadows.update(thing, {"state": {"desired": {"a": 1}}})
    shadows.update(thing, {"state": {"desired": {"b": 2}, "reported": {"a": 1}}})
    state = shadows.get(thing)["state"]
    assert (state["desired"], state["reported"]) == ({"a": 1, "b": 2}, {"a": 1})


def test_nested_objects_merge_deeply(shadows: ShadowClient) -> None:
    """section 2: objects are deep-merged [S1]."""
    thing = shadows.thing()
    shadows.update(thing, {"state": {"reported": {"lights": {"color": {"r": 1, "g": 2}, "on": True}}}})
    shadows.update(thing, {"state": {"reported": {"lights": {"color": {"g": 9}}}}})
    assert shadows.get(thing)["state"]["reported"] == {"lights": {"color": {"r": 1, "g": 9}, "on": True}}


def test_null_removes_a_field(shadows: ShadowClient) -> None:
    """section 2: a field set to null is removed [S1][S4]."""
    thing = shadows.thing()
    shadows.update(thing, {"state": {"desired": {"a": 1, "b": 2}}})
    shadows.update(thing, {"state": {"desired": {"a": None}}})
    assert shadows.get(thing)["state"]["desired"] == {"b": 2}


def test_nested_null_removes_only_that_leaf(shadows: ShadowClient) -> None:
    """section 2: null deletes the named field only, deep inside an object too [S1]."""
    thing = shadows.thing()
    shadows.update(thing, {"state": {"reported": {"x": {"y": 1, "z": 2}}}})
    shadows.update(thing, {"state": {"reported": {"x": {"y": None}}}})
    assert shadows.get(thing)["state"]["reported"] == {"x": {"z": 2}}


def test_nulls_for_fields_that_do_not_exist_add_nothing(shadows: ShadowClient) -> None:
    """section 2: a null removes a field; nulls aimed at fields that are not there add no empty object
    (and so no delta that never goes away), as AWS's shadow manager merges (JsonMerger.createMergeTree);
    an explicit {} is a value and stays."""
    thing = shadows.thing()
    shadows.update(thing, {"state": {"desired": {"a": {"b": None}, "c": {"d": {"e": None}}, "kept": 1}}})
    assert shadows.get(thing)["state"] == {"desired": {"kept": 1}, "delta": {"kept": 1}}
    shadows.update(thing, {"state": {"reported": {"kept": 1}, "desired": {"empty": {}}}})
    assert shadows.get(thing)["state"] == {
        "desired": {"kept": 1, "empty": {}},
        "reported": {"kept": 1},
        "delta": {"empty": {}},
    }


def test_desired_null_removes_the_whole_section(shadows: ShadowClient) -> None:
    """section 2: `"desired": null` removes the whole section [S1][S4]."""
    thing = shadows.thing()
    shadows.update(thing, {"state": {"desired": {"a": 1}, "reported": {"a": 2}}})
    shadows.update(thing, {"state": {"desired": None}})
    got = shadows.get(thing)
    assert got["state"] == {"reported": {"a": 2}}
    assert "desired" not in got["metadata"]


def test_shadow_with_neither_section_is_valid_and_empty(shadows: ShadowClient) -> None:
    """section 2: a shadow with neither section is valid and empty [S1]."""
    thing = shadows.thing()
    shadows.update(thing, {"state": {"desired": {"a": 1}, "reported": {"b": 1}}})
    shadows.update(thing, {"state": {"desired": None, "reported": None}})
    got = shadows.get(thing)
    assert got["state"] == {} and got["version"] == 2


def test_arrays_are_replaced_whole(shadows: ShadowClient) -> None:
    """section 2: an update replaces a whole array [S1]."""
    thing = shadows.thing()
    shadows.update(thing, {"state": {"desired": {"colors": ["RED", "GREEN", "BLUE"]}}})
    shadows.update(thing, {"state": {"desired": {"colors": ["RED"]}}})
    assert shadows.get(thing)["state"]["desired"] == {"colors": ["RED"]}


def test_array_containing_null_is_rejected(shadows: ShadowClient) -> None:
    """section 2: arrays cannot contain null; such an update is rejected [S1]."""
    thing = shadows.thing()
    outcome, answer = shadows.request(thing, "update", {"state": {"desired": {"colors": [None, "RED"]}}})
    assert outcome == "rejected" and answer["code"] == 400


def test_json_outside_desired_and_reported_is_not_stored(shadows: ShadowClient) -> None:
    """section 2: only fields inside desired and reported are stored; other JSON is ignored [S6]."""
    thing = shadows.thing()
    shadows.update(thing, {"state": {"reported": {"a": 1}}, "metadata": {"x": 1}, "extra": True})
    got = shadows.get(thing)
    assert got["state"] == {"reported": {"a": 1}}
    assert "extra" not in got


def test_client_token_is_echoed_in_accepted(shadows: ShadowClient) -> None:
    """section 2: clientToken is echoed in /accepted [S1]."""
    answer = shadows.update(shadows.thing(), {"state": {"reported": {"a": 1}}, "clientToken": "tok-1"})
    assert answer["clientToken"] == "tok-1"


def test_client_token_is_echoed_in_rejected(shadows: ShadowClient) -> None:
    """sections 2 and 3: the error document carries clientToken when one was sent [S1]."""
    outcome, answer = shadows.request(shadows.thing(), "update", {"clientToken": "tok-2"})
    assert outcome == "rejected" and answer["clientToken"] == "tok-2"


def test_client_token_over_64_bytes_is_invalid(shadows: ShadowClient) -> None:
    """section 2: a clientToken longer than 64 bytes is 400 `Invalid clientToken` [S1][S3]."""
    outcome, answer = shadows.request(shadows.thing(), "update", {"state": {}, "clientToken": "x" * 65})
    assert outcome == "rejected"
    assert (answer["code"], answer["message"]) == (400, "Invalid clientToken")


def test_client_token_of_exactly_64_bytes_is_accepted(shadows: ShadowClient) -> None:
    """section 7: clientToken <= 64 bytes is allowed [S1]."""
    answer = shadows.update(shadows.thing(), {"state": {"reported": {"a": 1}}, "clientToken": "x" * 64})
    assert answer["clientToken"] == "x" * 64


def test_update_with_the_current_version_is_processed(shadows: ShadowClient) -> None:
    """section 2: `version` equal to the current version is processed [S1][S4]."""
    thing = shadows.thing()
    shadows.update(thing, {"state": {"reported": {"a": 1}}})
    answer = shadows.update(thing, {"state": {"reported": {"a": 2}}, "version": 1})
    assert answer["version"] == 2


def test_update_with_another_version_is_409_version_conflict(shadows: ShadowClient) -> None:
    """sections 2 and 6: a version other than the current one is 409 `Version conflict` [S1][S4]."""
    thing = shadows.thing()
    shadows.update(thing, {"state": {"reported": {"a": 1}}})
    outcome, answer = shadows.request(
        thing, "update", {"state": {"reported": {"a": 2}}, "version": 7, "clientToken": "c"}
    )
    assert outcome == "rejected"
    assert (answer["code"], answer["message"], answer["clientToken"]) == (409, "Version conflict", "c")
    assert shadows.get(thing)["state"]["reported"] == {"a": 1}


def test_omitting_version_bypasses_version_matching(shadows: ShadowClient) -> None:
    """section 2: omit `version` to bypass version matching [S1]."""
    thing = shadows.thing()
    for value in range(3):
        shadows.update(thing, {"state": {"reported": {"a": value}}})
    assert shadows.get(thing)["version"] == 3


# ---- section 3: response documents [S1][S2] -----------------------------------------------------


def test_update_accepted_holds_only_the_requested_fields(shadows: ShadowClient) -> None:
    """section 3: /update/accepted `state` contains only the fields in the request [S1]."""
    thing = shadows.thing()
    shadows.update(thing, {"state": {"reported": {"a": 1, "b": 2}}})
    answer = shadows.update(thing, {"state": {"desired": {"c": 3}}})
    assert answer["state"] == {"desired": {"c": 3}}


def test_update_accepted_metadata_has_a_timestamp_per_leaf(shadows: ShadowClient) -> None:
    """section 3: metadata mirrors the request with {"timestamp"} for each updated leaf [S1]."""
    answer = shadows.update(shadows.thing(), {"state": {"desired": {"a": 1, "b": {"c": "x"}}}})
    ts = answer["timestamp"]
    assert answer["metadata"] == {"desired": {"a": {"timestamp": ts}, "b": {"c": {"timestamp": ts}}}}


def test_update_documents_carries_previous_and_current(shadows: ShadowClient) -> None:
    """section 3: /update/documents has previous (version N-1) and current (version N) [S1][S2]."""
    thing = shadows.thing()
    shadows.update(thing, {"state": {"reported": {"a": 1}}})
    shadows.update(thing, {"state": {"reported": {"a": 2}}, "clientToken": "d"})
    documents = shadows.messages(f"{shadows.prefix(thing)}/update/documents", at_least=2)[1]
    assert documents["previous"]["state"] == {"reported": {"a": 1}} and documents["previous"]["version"] == 1
    assert documents["current"]["state"] == {"reported": {"a": 2}} and documents["current"]["version"] == 2
    assert documents["clientToken"] == "d" and isinstance(documents["timestamp"], int)


def test_update_documents_of_a_new_shadow_has_no_previous(shadows: ShadowClient) -> None:
    """section 3: a shadow's first update has no document before it: /update/documents carries only
    current, as AWS's Greengrass shadow manager publishes it (withPrevious(null) for a new document);
    a shadow created again after a delete is new too."""
    thing = shadows.thing()
    shadows.update(thing, {"state": {"reported": {"a": 1}}})
    shadows.request(thing, "delete")
    shadows.update(thing, {"state": {"reported": {"a": 2}}})
    first, again = shadows.messages(f"{shadows.prefix(thing)}/update/documents", at_least=2)
    assert "previous" not in first and first["current"]["version"] == 1
    assert "previous" not in again and again["current"]["version"] == 2
    assert again["current"]["state"] == {"reported": {"a": 2}}


def test_update_documents_is_published_on_every_successful_update(shadows: ShadowClient) -> None:
    """section 3: /update/documents is published whenever an update is performed, equal values too [S2]."""
    thing = shadows.thing()
    for _ in range(3):
        shadows.update(thing, {"state": {"reported": {"same": 1}}})
    assert len(shadows.messages(f"{shadows.prefix(thing)}/update/documents", at_least=3)) == 3


def test_get_accepted_holds_the_full_document_with_delta(shadows: ShadowClient) -> None:
    """section 3: /get/accepted has desired, reported, delta, their metadata, version and timestamp [S1]."""
    thing = shadows.thing()
    shadows.update(thing, {"state": {"desired": {"a": 1, "b": 1}, "reported": {"a": 1}}})
    got = shadows.get(thing)
    assert got["state"] == {"desired": {"a": 1, "b": 1}, "reported": {"a": 1}, "delta": {"b": 1}}
    assert set(got["metadata"]) == {"desired", "reported", "delta"}
    assert got["version"] == 1 and isinstance(got["timestamp"], int)


def test_delete_accepted_is_version_and_timestamp(shadows: ShadowClient) -> None:
    """sections 3 and 5: /delete/accepted is the abbreviated {"version", "timestamp"} [S4]."""
    thing = shadows.thing()
    shadows.update(thing, {"state": {"reported": {"a": 1}}})
    outcome, answer = shadows.request(thing, "delete")
    assert outcome == "accepted"
    assert set(answer) == {"version", "timestamp"} and answer["version"] == 1


def test_error_document_has_code_message_and_timestamp(shadows: ShadowClient) -> None:
    """section 3: the error document is {code, message, timestamp?, clientToken?} [S1]."""
    outcome, answer = shadows.request(shadows.thing(), "update", b"{not json")
    assert outcome == "rejected"
    assert set(answer) == {"code", "message", "timestamp"}


def test_timestamps_are_epoch_seconds(shadows: ShadowClient) -> None:
    """section 3: `timestamp` and metadata timestamps are epoch seconds [S1]."""
    answer = shadows.update(shadows.thing(), {"state": {"reported": {"a": 1}}})
    assert abs(answer["timestamp"] - time.time()) < 30
    assert answer["metadata"]["reported"]["a"]["timestamp"] == answer["timestamp"]


def test_version_increments_on_every_update_even_with_equal_values(shadows: ShadowClient) -> None:
    """section 3: version increments by one on every successful update [S1]."""
    thing = shadows.thing()
    versions = [shadows.update(thing, {"state": {"reported": {"a": 1}}})["version"] for _ in range(3)]
    assert versions == [1, 2, 3]


# ---- section 4: delta [S1][S2] ------------------------------------------------------------------


def test_delta_includes_desired_fields_absent_from_reported(shadows: ShadowClient) -> None:
    """section 4: a desired field absent from reported is in the delta [S1]."""
    thing = shadows.thing()
    shadows.update(thing, {"state": {"desired": {"color": "RED", "state": "STOP"}, "reported": {"color": "GREEN"}}})
    assert shadows.get(thing)["state"]["delta"] == {"color": "RED", "state": "STOP"}


def test_delta_excludes_reported_fields_absent_from_desired(shadows: ShadowClient) -> None:
    """section 4: a reported field absent from desired is not in the delta [S1]."""
    thing = shadows.thing()
    shadows.update(thing, {"state": {"desired": {"a": 1}, "reported": {"a": 1, "engine": "ON"}}})
    assert "delta" not in shadows.get(thing)["state"]


def test_field_removed_from_reported_but_still_desired_is_in_delta(shadows: ShadowClient) -> None:
    """section 4: an attribute deleted from reported but still in desired is included [S1]."""
    thing = shadows.thing()
    shadows.update(thing, {"state": {"desired": {"a": 1}, "reported": {"a": 1}}})
    shadows.update(thing, {"state": {"reported": {"a": None}}})
    assert shadows.get(thing)["state"]["delta"] == {"a": 1}


def test_nested_delta_holds_only_the_path_to_the_differing_leaf(shadows: ShadowClient) -> None:
    """section 4: nested delta contains the path down to the differing leaf only [S1]."""
    thing = shadows.thing()
    color = {"r": 255, "g": 255, "b": 255}
    shadows.update(thing, {"state": {"desired": {"lights": {"color": color}}}})
    shadows.update(thing, {"state": {"reported": {"lights": {"color": {**color, "g": 0}}}}})
    assert shadows.get(thing)["state"]["delta"] == {"lights": {"color": {"g": 255}}}


def test_differing_array_is_copied_whole_into_delta(shadows: ShadowClient) -> None:
    """section 4: arrays compare as whole values and go into the delta whole [S1]."""
    thing = shadows.thing()
    shadows.update(thing, {"state": {"desired": {"seq": [1, 2, 3]}, "reported": {"seq": [1, 2]}}})
    assert shadows.get(thing)["state"]["delta"] == {"seq": [1, 2, 3]}


def test_delta_metadata_is_the_desired_metadata(shadows: ShadowClient) -> None:
    """section 4: delta metadata equals the metadata of the corresponding desired fields [S1]."""
    thing = shadows.thing()
    shadows.update(thing, {"state": {"desired": {"a": 1, "n": {"x": 1}}}})
    got = shadows.get(thing)
    assert got["metadata"]["delta"] == got["metadata"]["desired"]
    # a delta of one nested leaf and an array: the metadata of just those desired paths
    shadows.update(thing, {"state": {"reported": {"a": 1, "n": {"x": 1}}}})
    shadows.update(thing, {"state": {"desired": {"n": {"y": 2}, "arr": [1, {"k": 2}]}}})
    got = shadows.get(thing)
    assert got["state"]["delta"] == {"n": {"y": 2}, "arr": [1, {"k": 2}]}
    desired_meta = got["metadata"]["desired"]
    assert got["metadata"]["delta"] == {"n": {"y": desired_meta["n"]["y"]}, "arr": desired_meta["arr"]}


def test_update_delta_lists_every_differing_field_not_just_the_updated_one(shadows: ShadowClient) -> None:
    """section 4: /update/delta contains all differing desired attributes, stored ones too [S2]."""
    thing = shadows.thing()
    shadows.update(thing, {"state": {"desired": {"a": 1}}})
    shadows.update(thing, {"state": {"desired": {"b": 2}}, "clientToken": "dt"})
    deltas = shadows.messages(f"{shadows.prefix(thing)}/update/delta", at_least=2)
    assert deltas[1]["state"] == {"a": 1, "b": 2}
    assert deltas[1]["version"] == 2 and deltas[1]["clientToken"] == "dt"
    assert set(deltas[1]["metadata"]) == {"a", "b"}


def test_no_delta_message_when_an_update_makes_desired_equal_reported(shadows: ShadowClient) -> None:
    """section 4: when an update makes desired and reported equal no delta is sent [S2]."""
    thing = shadows.thing()
    shadows.update(thing, {"state": {"desired": {"a": 1}}})
    shadows.update(thing, {"state": {"reported": {"a": 1}}})
    shadows.settle(thing)
    assert len(shadows.messages(f"{shadows.prefix(thing)}/update/delta")) == 1
    assert "delta" not in shadows.get(thing)["state"]


# ---- section 5: delete [S2][S4] -----------------------------------------------------------------


def test_deleted_shadow_is_gone(shadows: ShadowClient) -> None:
    """section 5: delete removes the whole document [S2]."""
    thing = shadows.thing()
    shadows.update(thing, {"state": {"reported": {"a": 1}}})
    assert shadows.request(thing, "delete")[0] == "accepted"
    outcome, answer = shadows.request(thing, "get")
    assert outcome == "rejected" and answer["code"] == 404


def test_recreated_shadow_continues_the_deleted_version(shadows: ShadowClient) -> None:
    """section 5: version is not reset by a delete within 48 h [S4]."""
    thing = shadows.thing()
    shadows.update(thing, {"state": {"reported": {"a": 1}}})
    shadows.update(thing, {"state": {"reported": {"a": 2}}})
    shadows.request(thing, "delete")
    answer = shadows.update(thing, {"state": {"reported": {"a": 3}}})
    assert answer["version"] == 3
    assert shadows.get(thing)["state"] == {"reported": {"a": 3}}


def test_nulling_both_sections_does_not_delete_the_shadow(shadows: ShadowClient) -> None:
    """section 5: null-ed sections do not delete the shadow; the version goes on [S4]."""
    thing = shadows.thing()
    shadows.update(thing, {"state": {"reported": {"a": 1}}})
    shadows.update(thing, {"state": {"reported": None}})
    assert shadows.get(thing)["version"] == 2
    assert shadows.update(thing, {"state": {"reported": {"a": 1}}})["version"] == 3


def test_state_null_clears_both_sections_and_keeps_the_shadow(shadows: ShadowClient) -> None:
    """section 5: `"state": null` empties desired and reported without deleting the shadow (docs/shadows.md)."""
    thing = shadows.thing()
    shadows.update(thing, {"state": {"desired": {"a": 1}, "reported": {"a": 2}}})
    answer = shadows.update(thing, {"state": None})
    assert answer["state"] is None and answer["version"] == 2
    got = shadows.get(thing)
    assert got["state"] == {} and got["version"] == 2


# ---- section 6: errors [S3] ---------------------------------------------------------------------


def _rejection(shadows: ShadowClient, payload: object) -> tuple[int, str]:
    outcome, answer = shadows.request(shadows.thing(), "update", payload)
    assert outcome == "rejected", answer
    return answer["code"], answer["message"]


def test_malformed_json_is_400_invalid_json(shadows: ShadowClient) -> None:
    """section 6: `Invalid JSON` [S3]."""
    assert _rejection(shadows, b'{"state": ') == (400, "Invalid JSON")


def test_missing_state_is_400(shadows: ShadowClient) -> None:
    """section 6: `Missing required node: state` [S3]."""
    assert _rejection(shadows, {"desired": {"a": 1}}) == (400, "Missing required node: state")


def test_non_object_state_is_400(shadows: ShadowClient) -> None:
    """section 6: `State node must be an object` [S3]."""
    assert _rejection(shadows, {"state": [1]}) == (400, "State node must be an object")


def test_non_object_desired_is_400(shadows: ShadowClient) -> None:
    """section 6: `Desired node must be an object` (moto crashes here, section 9) [S3]."""
    assert _rejection(shadows, {"state": {"desired": 5}}) == (400, "Desired node must be an object")


def test_non_object_reported_is_400(shadows: ShadowClient) -> None:
    """section 6: `Reported node must be an object` [S3]."""
    assert _rejection(shadows, {"state": {"reported": "on"}}) == (400, "Reported node must be an object")


def test_wrong_version_types_are_400_invalid_version(shadows: ShadowClient) -> None:
    """section 6: `Invalid version` for a version that is not a non-negative integer [S3]."""
    for version in ("3", 1.5, True, -1, None):
        assert _rejection(shadows, {"state": {}, "version": version}) == (400, "Invalid version")


def test_delta_node_in_request_is_an_invalid_node(shadows: ShadowClient) -> None:
    """section 6: `State contains an invalid node` for state.delta [S3]."""
    assert _rejection(shadows, {"state": {"delta": {"a": 1}}}) == (400, "State contains an invalid node")


def test_non_utf8_payload_is_415(shadows: ShadowClient) -> None:
    """section 6: 415 `Unsupported documented encoding; supported encoding is UTF-8` [S3]."""
    code, message = _rejection(shadows, b'{"state": {"reported": {"a": "\xff"}}}')
    assert (code, message) == (415, "Unsupported documented encoding; supported encoding is UTF-8")


# ---- section 7: limits [S3][S6][S8] -------------------------------------------------------------


def _nested(levels: int) -> dict:
    value: dict = {"leaf": 1}
    for index in range(levels - 1):
        value = {f"l{index}": value}
    return value


def test_six_levels_are_accepted_seven_are_400(shadows: ShadowClient) -> None:
    """section 7: reject an attribute path deeper than 6 levels below desired/reported [S3][S9]."""
    shadows.update(shadows.thing(), {"state": {"reported": _nested(6)}})
    code, message = _rejection(shadows, {"state": {"reported": _nested(7)}})
    assert (code, message) == (400, "JSON contains too many levels of nesting; maximum is 6")


def test_merged_document_over_8kb_is_413_even_for_a_small_update(shadows: ShadowClient) -> None:
    """section 7: the 8 KB limit applies to the merged document, not the request [S6][S8]."""
    thing = shadows.thing()
    shadows.update(thing, {"state": {"desired": {"big": "x" * 8100}}})
    outcome, answer = shadows.request(thing, "update", {"state": {"reported": {"more": "y" * 100}}})
    assert outcome == "rejected"
    assert (answer["code"], answer["message"]) == (413, "The payload exceeds the maximum size allowed")


def test_request_over_128_kb_is_413(shadows: ShadowClient) -> None:
    """section 7: a request over AWS IoT's 128 KB message limit is 413, before it is read [S3][S9]."""
    code, message = _rejection(shadows, b'{"state": {"reported": {"a": "' + b"x" * (128 * 1024) + b'"}}}')
    assert (code, message) == (413, "The payload exceeds the maximum size allowed")


def test_invalid_thing_or_shadow_name_is_400(shadows: ShadowClient) -> None:
    """section 7: names outside AWS's thingName [a-zA-Z0-9:_-]{1,128} and shadowName [$a-zA-Z0-9:_-]{1,64}
    are 400 (UpdateThingShadow's URI parameters); `$` is allowed in a shadow name (AWS's `$package`)."""
    outcome, answer = shadows.request("bad.thing", "update", {"state": {"reported": {"a": 1}}})
    assert outcome == "rejected" and (answer["code"], answer["message"]) == (400, "Invalid thing name")
    outcome, answer = shadows.request(shadows.thing(), "update", {"state": {"reported": {"a": 1}}}, name="n" * 65)
    assert outcome == "rejected" and (answer["code"], answer["message"]) == (400, "Invalid shadow name")
    assert shadows.update(shadows.thing(), {"state": {"reported": {"a": 1}}}, name="$package")["version"] == 1


def test_metadata_does_not_count_towards_8kb(shadows: ShadowClient) -> None:
    """section 7: only desired + reported count; the returned document may exceed 8 KB [S6]."""
    thing = shadows.thing()
    many = {f"k{i:03d}": i for i in range(600)}  # ~7 KB of state, ~20 KB of metadata
    shadows.update(thing, {"state": {"reported": many}})
    got = shadows.get(thing)
    assert len(json.dumps(got)) > 8192 and got["state"]["reported"] == many


# ---- issue 6 item 5: bad input never breaks the service or the store ----------------------------


def test_rejected_update_leaves_the_stored_document_untouched(shadows: ShadowClient) -> None:
    """issue 6 item 5 and section 2: a rejected update changes nothing and does not bump the version."""
    thing = shadows.thing()
    shadows.update(thing, {"state": {"desired": {"a": 1}}})
    for bad in ({"state": {"desired": {"b": "z" * 9000}}}, {"state": {"desired": 1}}, b"\x00\x01"):
        assert shadows.request(thing, "update", bad)[0] == "rejected"
    got = shadows.get(thing)
    assert got["version"] == 1 and got["state"]["desired"] == {"a": 1}


def test_service_answers_after_a_burst_of_garbage(shadows: ShadowClient) -> None:
    """issue 6 item 5: nothing crashes the service."""
    thing = shadows.thing()
    for payload in (b"", b"null", b"[]", b"1e999999", b'{"state":{"reported":{"a":NaN}}}', b"\xc3\x28", b"{" * 5000):
        shadows.client.publish(f"{shadows.prefix(thing)}/update", payload, qos=1).wait_for_publish(5)
    shadows.client.publish(f"{shadows.prefix(thing)}/get", b"\xff", qos=1).wait_for_publish(5)
    assert len(shadows.messages(f"{shadows.prefix(thing)}/update/rejected", at_least=7)) == 7
    assert shadows.messages(f"{shadows.prefix(thing)}/get/rejected", at_least=1)[0]["code"] == 404
    assert shadows.update(thing, {"state": {"reported": {"ok": True}}})["version"] == 1


def test_documents_survive_a_core_crash(shadows: ShadowClient, shadow_gateway: RunningGateway) -> None:
    """issue 6 item 1: documents persist in SQLite; a killed core comes back with them."""
    thing = shadows.thing()
    shadows.update(thing, {"state": {"reported": {"kept": 1}}})
    shadows.update(thing, {"state": {"reported": {"kept": 2}}}, name="n1")
    pid = shadow_gateway.status()["processes"]["core"]["pid"]
    os.kill(pid, signal.SIGKILL)

    def core_back() -> bool:
        core = shadow_gateway.status()["processes"]["core"]
        return core["state"] == "RUNNING" and core["pid"] != pid

    wait_until(core_back, 20, "supervisord to restart the core", interval_s=0.2)
    answer = wait_until(lambda: _get_when_up(shadows, thing), 20, "the restarted core to answer")
    assert answer == ({"reported": {"kept": 1}}, 1)
    assert shadows.get(thing, name="n1")["state"] == {"reported": {"kept": 2}}


def _get_when_up(shadows: ShadowClient, thing: str) -> tuple[dict, int] | None:
    try:
        got = shadows.get(thing)
    except AssertionError:
        return None
    return got["state"], got["version"]
