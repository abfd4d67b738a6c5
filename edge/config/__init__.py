"""config.yaml: ``schema`` (the sections the daemon's parts take as they are; ``broker`` holds the mqtt one),
``load`` (read and validate a file), ``yaml_reader`` (YAML with line numbers and error wording), ``secrets``."""
