"""MQTT events: the embedded amqtt broker (or a client of an external one) and what the node publishes.

Layout: ``payloads``, ``schemas`` and ``credentials`` are pure (topics, JSON payloads and their
schemas, who may connect and publish); ``handoff`` is the bounded, never-blocking queue between
the trio loop and the MQTT thread; ``mqttthread`` runs that thread's asyncio loop; ``broker`` and
``external`` are the two sinks it can host; ``service`` is the trio shell the node wires in.
Nothing here may block the trio loop. See docs/events.md.
"""
