"""The plant side of a station: triggers from every interface, GPIO lines and a Modbus TCP slave."""


class IoError(Exception):
    """A Modbus port or GPIO line that cannot be had; names the config key."""
