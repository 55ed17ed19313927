"""Command-line clients: ``bctl`` (HTTP client of the REST API, MQTT subscriber)."""
