"""A real external MQTT client (paho-mqtt) for the events tests, and a Mosquitto launcher.

``Subscriber`` connects like any monitoring system would, collects every message it receives in
its own network thread, and lets a test poll for one with a deadline; ``stall()`` stops reading
while the socket stays open (a stuck subscriber). ``run_mosquitto`` starts Debian's mosquitto on a
free loopback port for external mode.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from pgbalancer.devtools import free_tcp_port, wait_for
from pgbalancer.events.schemas import schema_for_topic, validate

MOSQUITTO = Path("/usr/sbin/mosquitto")


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool

    @property
    def document(self) -> dict[str, Any]:
        decoded: dict[str, Any] = json.loads(self.payload)
        return decoded

    def checked(self) -> dict[str, Any]:
        """The payload, after asserting it matches its topic's JSON Schema."""
        document = self.document
        problems = validate(document, schema_for_topic(self.topic))
        assert not problems, f"{self.topic} payload breaks its schema: {problems}\n{document}"
        return document


class Subscriber:
    """One paho client in its own network thread; thread-safe accessors for what it got."""

    def __init__(
        self,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        client_id: str = "",
        host: str = "127.0.0.1",
    ) -> None:
        self.host, self.port = host, port
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self._lock = threading.Lock()
        self._received: list[Received] = []
        self.connect_result: str | None = None  # "success" or paho's reason (e.g. "Not authorized")
        self.connect_failed: bool | None = None
        self.granted: list[int] = []

    def use_tls(self, ca_file: Path) -> Subscriber:
        self.client.tls_set(ca_certs=str(ca_file))
        return self

    def connect(self, timeout: float = 10.0) -> bool:
        """Connect and wait for CONNACK; True when the broker accepted us."""
        self.client.connect(self.host, self.port, keepalive=60)
        self.client.loop_start()
        wait_for(lambda: self.connect_failed is not None, timeout, message="a CONNACK")
        return not self.connect_failed

    def subscribe(self, topic: str = "pgbalancer/#", qos: int = 0, timeout: float = 10.0) -> list[int]:
        self.granted = []
        self.client.subscribe(topic, qos)
        return wait_for(lambda: list(self.granted), timeout, message=f"a SUBACK for {topic}")

    def publish(self, topic: str, payload: bytes, *, retain: bool = False, timeout: float = 10.0) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout)

    def received(self, topic: str | None = None) -> list[Received]:
        with self._lock:
            return [m for m in self._received if topic is None or m.topic == topic]

    def wait_for(
        self, topic: str, predicate: Callable[[Received], bool] = lambda m: True, timeout: float = 15.0
    ) -> Received:
        """The first message on ``topic`` that satisfies ``predicate`` (polls; raises on timeout)."""

        def found() -> Received | None:
            return next((m for m in self.received(topic) if predicate(m)), None)

        message = wait_for(found, timeout, message=f"an MQTT message on {topic}")
        assert message is not None
        return message

    def stall(self) -> None:
        """Stop reading (the network thread ends) while the TCP connection stays open."""
        self.client.loop_stop()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()
        with contextlib.suppress(Exception):
            sock = self.client.socket()
            if sock is not None:
                sock.close()

    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object
    ) -> None:
        self.connect_result = str(reason)
        self.connect_failed = bool(getattr(reason, "is_failure", True))

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reasons: list[ReasonCode],
        props: Properties | None,
    ) -> None:
        self.granted = [code.value for code in reasons]

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self._received.append(Received(message.topic, bytes(message.payload), bool(message.retain)))


@contextlib.contextmanager
def subscriber(port: int, **kwargs: str) -> Iterator[Subscriber]:
    client = Subscriber(port, **kwargs)
    try:
        yield client
    finally:
        client.close()


@contextlib.contextmanager
def run_mosquitto(workdir: Path) -> Iterator[int]:
    """A private mosquitto on a free loopback port (anonymous access); yields the port."""
    if shutil.which(str(MOSQUITTO)) is None:
        raise FileNotFoundError(
            f"{MOSQUITTO} is missing: install Debian's mosquitto package (make test does)"
        )
    port = free_tcp_port()
    config = workdir / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    log = (workdir / "mosquitto.log").open("wb")
    process = subprocess.Popen([str(MOSQUITTO), "-c", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _accepts(port), 10.0, message=f"mosquitto listening on {port}")
        yield port
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
