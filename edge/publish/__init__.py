"""Where verdicts go: MQTT, the durable outbox, evidence files."""
