"""`millgate shadow get|update|delete THING [DOCUMENT] [--name N]`: one request to the local shadow
service over the broker as the operator; prints the accepted JSON (exit 0) or the rejected JSON (exit 1);
a thing or shadow name that cannot be a topic level is refused before anything is sent (exit 2).

It implements no shadow rule itself: whatever the service answers is what the operator sees.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import uuid
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.subscribeoptions import SubscribeOptions

from gateway.cli_support import load_quietly, paths_for
from gateway.operator_client import OperatorError, connected_operator
from gateway.paths import GatewayPaths
from gateway.shadows.document import SHADOW_NAME, THING_NAME
from gateway.topics import shadow_topic

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
ANSWER_TIMEOUT_S = 10.0
NAME_CHARACTERS = "letters, digits, ':', '_' and '-'"


def name_problem(thing: str, name: str | None) -> str | None:
    """What is wrong with a thing or shadow name for a shadow topic (AWS IoT's limits [S9]), or None."""
    if not THING_NAME.fullmatch(thing):
        return f"thing name {thing!r} is not valid: use 1-128 {NAME_CHARACTERS}"
    if name is not None and not SHADOW_NAME.fullmatch(name):
        return f"--name {name!r} is not a valid shadow name: use 1-64 {NAME_CHARACTERS}"
    return None


def request_shadow(
    paths: GatewayPaths, thing: str, operation: str, document: str | None, name: str | None
) -> tuple[bool, str]:
    """(accepted?, the answer's JSON text) for one request; raises OperatorError without an answer."""
    topic = shadow_topic(thing, name, operation)
    payload, token = _payload(document)
    client = connected_operator(paths, "shadow")
    answers: list[tuple[bool, str]] = []
    arrived = threading.Event()
    subscribed = threading.Event()
    refused: list[str] = []

    def on_message(_c: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        text = message.payload.decode("utf-8", errors="backslashreplace")
        if token is not None:
            try:
                if json.loads(text).get("clientToken") != token:
                    return
            except (ValueError, AttributeError):
                return
        answers.append((message.topic.endswith("/accepted"), text))
        arrived.set()

    def on_subscribe(_c: paho.Client, _u: object, _mid: int, reasons: list[Any], _p: object) -> None:
        refused.extend(str(r) for r in reasons if r.is_failure)
        subscribed.set()

    client.on_message = on_message
    client.on_subscribe = on_subscribe
    try:
        client.subscribe([(f"{topic}/{outcome}", SubscribeOptions(qos=1)) for outcome in ("accepted", "rejected")])
        if not subscribed.wait(ANSWER_TIMEOUT_S) or refused:
            raise OperatorError(f"cannot subscribe to {topic}/accepted|rejected: {refused or 'no SUBACK'}")
        info = client.publish(topic, payload, qos=1)
        info.wait_for_publish(ANSWER_TIMEOUT_S)
        if not arrived.wait(ANSWER_TIMEOUT_S):
            raise OperatorError(
                f"{topic}: no answer from the shadow service within {ANSWER_TIMEOUT_S:.0f} s; is the core running?"
            )
    finally:
        client.disconnect()
        client.loop_stop()
    return answers[0]


def _payload(document: str | None) -> tuple[bytes, str | None]:
    """The request to send and the clientToken to match the answer by (None: match by topic only)."""
    if document is None:
        token = f"cli-{uuid.uuid4().hex}"
        return json.dumps({"clientToken": token}).encode(), token
    try:
        parsed = json.loads(document)
    except ValueError:
        return document.encode("utf-8", errors="surrogateescape"), None  # the service says what is wrong
    if not isinstance(parsed, dict):
        return document.encode("utf-8"), None
    given = parsed.get("clientToken")
    if given is None:
        token = f"cli-{uuid.uuid4().hex}"
        parsed["clientToken"] = token
        return json.dumps(parsed).encode(), token
    return document.encode("utf-8"), given if isinstance(given, str) else None


def cmd_shadow(args: argparse.Namespace) -> int:
    problem = name_problem(args.thing, args.name)
    if problem is not None:
        print(f"millgate shadow: {problem}", file=sys.stderr)
        return EXIT_USAGE
    document = args.document
    if args.shadow_verb == "update" and (document is None or document == "-"):
        document = sys.stdin.read()
    try:
        accepted, answer = request_shadow(
            paths_for(args, load_quietly(args)), args.thing, args.shadow_verb, document, args.name
        )
    except OperatorError as exc:
        print(f"millgate shadow: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(answer)
    return EXIT_OK if accepted else EXIT_FAILED


def add_shadow_parser(verbs: Any, common: argparse.ArgumentParser) -> None:
    shadow = verbs.add_parser("shadow", help="get, update or delete a device shadow on this gateway", parents=[common])
    shadow_verbs = shadow.add_subparsers(dest="shadow_verb", required=True, metavar="ACTION")
    for verb, help_text in (
        ("get", "print the shadow document"),
        ("update", 'apply a request document: {"state": {"desired": {...}}}'),
        ("delete", "delete the shadow"),
    ):
        parser = shadow_verbs.add_parser(verb, help=help_text, parents=[common])
        parser.add_argument("thing")
        if verb == "update":
            parser.add_argument("document", nargs="?", help="the request JSON; '-' or absent: read stdin")
        else:
            parser.set_defaults(document=None)
        parser.add_argument("--name", default=None, metavar="N", help="a named shadow (default: the classic one)")
        parser.set_defaults(handler=cmd_shadow)
