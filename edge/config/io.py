"""The ``io`` section: the plant side of a station, GPIO lines and a Modbus TCP slave (both off by default).

What each line and register means is in README.md ("For controls engineers") and edge/io/.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PIN_FACTORIES = ("lgpio", "rpigpio", "pigpio", "native", "mock")  # gpiozero's own names for its pin libraries
_Pin = int | None


class GpioConfig(BaseModel):
    """GPIO lines through gpiozero (BCM numbers): a trigger input, reject/pass pulses and status outputs."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: bool = Field(False, strict=True, description="Drive the GPIO lines below.")
    pin_factory: Literal[PIN_FACTORIES] = Field(
        "lgpio",
        description="gpiozero pin library: lgpio (Raspberry Pi 4 and 5), rpigpio, pigpio, native, or mock "
        "(simulated pins, for tests and for a dry run without wiring).",
    )
    trigger_pin: _Pin = Field(None, ge=0, le=53, strict=True,
                              description="BCM number of the trigger input; null = no hardware trigger.")
    trigger_edge: Literal["rising", "falling"] = Field(
        "rising", description="Which electrical edge on trigger_pin is a trigger: rising (low to high) or falling.")
    pull: Literal["up", "down", "none"] = Field(
        "down", description="Internal pull resistor on trigger_pin; none for a driven (push-pull) signal.")
    debounce_ms: float = Field(5.0, ge=0, le=1000, strict=True,
                               description="A trigger edge less than this after the previous one is contact bounce, "
                               "not a trigger (milliseconds).")
    reject_pin: _Pin = Field(None, ge=0, le=53, strict=True,
                             description="BCM number of the reject output: pulses for fail, unscorable, and a "
                             "trigger that found no frame; null = none.")
    pass_pin: _Pin = Field(None, ge=0, le=53, strict=True,
                           description="BCM number of the pass output: pulses for pass; null = none.")
    pulse_ms: float = Field(50.0, gt=0, le=10000, strict=True,
                            description="Length of a reject or pass pulse, in milliseconds.")
    ready_pin: _Pin = Field(None, ge=0, le=53, strict=True,
                            description="BCM number of the station-ready output: high while the daemon is "
                            "inspecting (started, source not away); null = none.")
    busy_pin: _Pin = Field(None, ge=0, le=53, strict=True,
                           description="BCM number of the busy output: high from a trigger until its answer; "
                           "null = none.")

    @model_validator(mode="after")
    def _distinct_pins(self) -> GpioConfig:
        used = [(name, pin) for name in ("trigger_pin", "reject_pin", "pass_pin", "ready_pin", "busy_pin")
                if (pin := getattr(self, name)) is not None]
        pins = [pin for _, pin in used]
        duplicates = sorted({pin for pin in pins if pins.count(pin) > 1})
        if duplicates:
            raise ValueError(f"pin {duplicates[0]} is used for more than one line "
                             f"({', '.join(name for name, pin in used if pin == duplicates[0])})")
        return self


class ModbusConfig(BaseModel):
    """A Modbus TCP slave (server) for a PLC: a trigger coil and the last verdict in registers."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: bool = Field(False, strict=True, description="Serve Modbus TCP.")
    host: str = Field("127.0.0.1", min_length=1,
                      description="Address to listen on; 0.0.0.0 for every interface (the PLC's network).")
    port: int = Field(5020, ge=1, le=65535, strict=True,
                      description="TCP port; 502 is the standard one and needs CAP_NET_BIND_SERVICE.")


class IoConfig(BaseModel):
    """Plant IO: GPIO and Modbus TCP."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    gpio: GpioConfig = Field(default_factory=GpioConfig, description="GPIO lines.")
    modbus: ModbusConfig = Field(default_factory=ModbusConfig, description="Modbus TCP slave.")
