"""``bctl events``: subscribe to a node's MQTT broker (paho-mqtt) and print each event as it arrives.

The broker is the API node's host on its ``mqtt_port`` (read from ``GET /config``) unless
``--mqtt-host/--mqtt-port`` say otherwise; credentials come from ``--mqtt-user`` or
``PGBALANCER_MQTT_USER`` with ``PGBALANCER_MQTT_PASSWORD``. Lines look like
``2024-05-01T12:00:00.000Z pgbalancer/cluster/health cluster_health up=3 ...``; ``--json`` prints one
object per line: ``{"topic", "retain", "payload"}`` (payload decoded when it is JSON).

It must never: publish anything, print the broker password, or keep running after --count events.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import secrets
import sys
from typing import Any

from pgbalancer.cli.connection import ApiClient
from pgbalancer.cli.errors import EXIT_REFUSED, EXIT_UNREACHABLE, CliError

_HEADER_FIELDS = frozenset({"event", "node", "ts", "epoch", "event_id"})


def _broker(args: argparse.Namespace, client: ApiClient) -> tuple[str, int]:
    host = args.mqtt_host or client.endpoints[0].host
    if args.mqtt_port is not None:
        return host, args.mqtt_port
    settings = client.request("GET", "/config")["settings"]
    if settings.get("mqtt_mode") == "off":
        raise CliError("this node publishes no events (mqtt_mode = off); set mqtt_mode = embedded and reload")
    if settings.get("mqtt_mode") == "external":
        raise CliError(
            "this node publishes to an external broker (mqtt_broker_url); pass --mqtt-host and --mqtt-port"
        )
    if not args.mqtt_host and client.current is not None:
        host = client.current.host
    return host, int(settings["mqtt_port"])


def format_line(topic: str, payload: bytes) -> str:
    try:
        document = json.loads(payload)
    except ValueError:
        return f"{topic} {payload.decode('utf-8', 'replace')}"
    if not isinstance(document, dict):
        return f"{topic} {json.dumps(document)}"
    details = " ".join(
        f"{key}={json.dumps(value) if isinstance(value, dict | list) else value}"
        for key, value in document.items()
        if key not in _HEADER_FIELDS
    )
    return f"{document.get('ts', '-')} {topic} {document.get('event', '-')} {details}".rstrip()


def _as_json(topic: str, payload: bytes, retain: bool) -> str:
    try:
        decoded: Any = json.loads(payload)
    except ValueError:
        decoded = payload.decode("utf-8", "replace")
    return json.dumps({"topic": topic, "retain": retain, "payload": decoded})


def stream_events(args: argparse.Namespace, client: ApiClient, json_output: bool) -> int:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    host, port = _broker(args, client)
    env = client.env
    user = args.mqtt_user or env.get("PGBALANCER_MQTT_USER")
    inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
    # A fresh client id and a clean session every time: amqtt keeps a session (and its subscriptions)
    # per client id, so a reused id would bring back an earlier run's topic filter.
    client_id = f"bctl-{os.getpid()}-{secrets.token_hex(4)}"
    subscriber = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    if user:
        subscriber.username_pw_set(user, env.get("PGBALANCER_MQTT_PASSWORD"))

    def on_connect(c: mqtt.Client, userdata: object, flags: object, reason: Any, props: object) -> None:
        if getattr(reason, "is_failure", False):
            inbox.put(("refused", str(reason)))
        else:
            c.subscribe(args.topic, 0)
            inbox.put(("connected", None))

    def on_message(c: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        # The embedded amqtt broker has been seen to hand a new subscriber a retained message of
        # another topic (a race in its retained-message delivery): print only what was asked for.
        if mqtt.topic_matches_sub(args.topic, message.topic):
            inbox.put(("message", (message.topic, bytes(message.payload), bool(message.retain))))
        elif client.verbose:
            client.log(f"> MQTT skipped {message.topic}: outside {args.topic}")

    def on_disconnect(c: mqtt.Client, userdata: object, flags: object, reason: Any, props: object) -> None:
        inbox.put(("disconnected", str(reason)))

    subscriber.on_connect = on_connect
    subscriber.on_message = on_message
    subscriber.on_disconnect = on_disconnect
    if client.verbose:
        client.log(f"> MQTT {host}:{port} subscribe {args.topic}")
    try:
        subscriber.connect(host, port, keepalive=30)
    except OSError as exc:
        raise CliError(
            f"cannot reach the MQTT broker at {host}:{port}: {exc}; check --mqtt-host/--mqtt-port",
            EXIT_UNREACHABLE,
        ) from None
    subscriber.loop_start()
    seen = 0
    try:
        while args.count is None or seen < args.count:
            kind, value = inbox.get()
            if kind == "refused":
                raise CliError(
                    f"the MQTT broker refused us ({value}); set PGBALANCER_MQTT_USER and "
                    "PGBALANCER_MQTT_PASSWORD to a user of mqtt_user_file",
                    EXIT_REFUSED,
                )
            if kind == "disconnected":
                raise CliError(f"the MQTT broker closed the connection ({value})", EXIT_UNREACHABLE)
            if kind != "message":
                continue
            topic, payload, retain = value
            line = _as_json(topic, payload, retain) if json_output else format_line(topic, payload)
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
            seen += 1
    finally:
        subscriber.on_disconnect = None
        subscriber.disconnect()
        subscriber.loop_stop()
    return 0
