"""config.yaml: the typed schema, the YAML reader that gives line numbers, and secrets."""
