"""GPIO lines through gpiozero: a trigger input, reject/pass pulses, and ready/busy outputs for a PLC.

The pin library is config's io.gpio.pin_factory, loaded by gpiozero's own name for it: lgpio on a Raspberry Pi 4
or 5, mock for simulated pins (tests drive those through the same code). Outputs are active high.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from importlib.metadata import entry_points

from gpiozero import DigitalInputDevice, DigitalOutputDevice
from gpiozero.exc import GPIOZeroError

from edge.config.io import GpioConfig
from edge.io import IoError
from edge.io.triggers import Trigger
from edge.text import one_line

logger = logging.getLogger("lineguard")

PIN_FACTORY_GROUP = "gpiozero_pin_factories"  # where gpiozero registers its pin libraries by name
PULLS = {"up": True, "down": False, "none": None}


def load_pin_factory(name: str):
    """gpiozero's pin factory called ``name``; IoError naming the key when it cannot run here."""
    try:
        [entry] = entry_points(group=PIN_FACTORY_GROUP, name=name)
        return entry.load()()
    except ValueError:
        raise IoError(f"io.gpio.pin_factory: gpiozero has no pin factory {name!r}") from None
    except Exception as exc:  # noqa: BLE001 - a missing library or no GPIO chip: both mean no GPIO here
        raise IoError(f"io.gpio.pin_factory: {name} cannot run here: {one_line(str(exc)) or type(exc).__name__}"
                      ) from None


class GpioLines:
    """The configured lines, opened on one pin factory; ``on_trigger`` gets each trigger edge."""

    def __init__(self, config: GpioConfig, on_trigger: Callable[[Trigger], bool]) -> None:
        self.config, self.on_trigger = config, on_trigger
        self._last_edge_s = float("-inf")
        self.factory = load_pin_factory(config.pin_factory)
        self._devices = []
        try:
            self.trigger = self._input(config) if config.trigger_pin is not None else None
            self.reject, self.passed, self.ready, self.busy = (
                self._output(pin) for pin in (config.reject_pin, config.pass_pin, config.ready_pin, config.busy_pin))
        except (GPIOZeroError, OSError, RuntimeError) as exc:
            self.close()
            raise IoError(f"io.gpio: cannot open the configured pins: {one_line(str(exc))}") from None
        logger.info("gpio: lines open on the %s pin factory", config.pin_factory)

    def _input(self, config: GpioConfig) -> DigitalInputDevice:
        pull_up = PULLS[config.pull]
        # With a pull resistor gpiozero makes the idle level inactive; without one, active means high.
        # Debounce is ours (_edge), the same on every pin library and without delaying the edge.
        line = DigitalInputDevice(config.trigger_pin, pull_up=pull_up, active_state=True if pull_up is None else None,
                                  pin_factory=self.factory)
        self._devices.append(line)
        rising_activates = pull_up is not True  # with a pull-up, gpiozero makes low the active level
        activation = (config.trigger_edge == "rising") == rising_activates
        setattr(line, "when_activated" if activation else "when_deactivated", self._edge)
        return line

    def _output(self, pin: int | None) -> DigitalOutputDevice | None:
        if pin is None:
            return None
        line = DigitalOutputDevice(pin, active_high=True, initial_value=False, pin_factory=self.factory)
        self._devices.append(line)
        return line

    def _edge(self) -> None:
        now = time.monotonic()
        if (now - self._last_edge_s) * 1000.0 < self.config.debounce_ms:
            logger.debug("gpio: trigger edge %.1f ms after the last one ignored (debounce)",
                         (now - self._last_edge_s) * 1000.0)
            return
        self._last_edge_s = now
        self.on_trigger(Trigger("gpio", now))

    # --- what the station shows ---

    def pulse(self, passed: bool) -> None:
        """One pulse of io.gpio.pulse_ms on the pass or the reject line; it runs on gpiozero's own thread."""
        line = self.passed if passed else self.reject
        if line is not None:
            pulse_s = self.config.pulse_ms / 1000.0
            line.blink(on_time=pulse_s, off_time=pulse_s, n=1, background=True)

    def show_status(self, ready: bool, busy: bool) -> None:
        for line, on in ((self.ready, ready), (self.busy, busy)):
            if line is not None:
                line.value = on

    def close(self) -> None:
        for device in reversed(self._devices):
            device.close()
        self._devices = []
