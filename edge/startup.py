"""What `run` opens before it inspects, in order, and what `check-config` checks without opening anything."""
from __future__ import annotations

import logging

from edge.capture.base import CaptureError, FrameSource
from edge.capture.registry import open_source, preflight_source
from edge.config.errors import ConfigError
from edge.config.schema import Config
from edge.config.secrets import resolve_mqtt_password
from edge.core.bundle import BundleError
from edge.core.inspector import Inspector
from edge.core.preprocess import ImageError, read_image
from edge.core.runtime import ModelLoadError
from edge.publish.mqtt import MqttLink
from edge.publish.outbox import Outbox, OutboxError
from edge.text import one_line

logger = logging.getLogger("lineguard")

OUTBOX_FILE = "outbox.sqlite3"


class StartupError(Exception):
    """Config, bundle or source problem found before inspecting: exit 78, systemd does not restart."""


def build_inspector(cfg: Config) -> Inspector:
    """The bundle and the device's ROI, ignore mask and threshold override; StartupError on any problem."""
    mask = None
    try:
        if cfg.inference.ignore_mask is not None:
            mask = read_image(cfg.inference.ignore_mask, "gray")
        roi = tuple(cfg.inference.roi) if cfg.inference.roi else None
        return Inspector(cfg.model, threads=cfg.inference.threads, roi=roi, ignore_mask=mask,
                         ignore_polygons=cfg.inference.ignore_polygons, threshold=cfg.inference.threshold,
                         min_region_px=cfg.inference.min_region_px, quality_gate=cfg.inference.quality_gate)
    except (BundleError, ModelLoadError, ImageError) as exc:
        raise StartupError(one_line(str(exc))) from None


def open_outbox(cfg: Config) -> Outbox:
    storage = cfg.storage.dir
    try:
        storage.mkdir(parents=True, exist_ok=True)
        return Outbox(storage / OUTBOX_FILE, cfg.storage.outbox_max_messages, cfg.storage.outbox_when_full,
                      cfg.storage.sync)
    except (OSError, OutboxError) as exc:
        raise StartupError(f"storage.dir {storage}: {exc}") from None


def open_frames(cfg: Config, grayscale: bool, on_state) -> FrameSource:
    try:
        return open_source(cfg.source, grayscale, on_state)
    except CaptureError as exc:
        raise StartupError(str(exc)) from None


def start_link(link: MqttLink) -> None:
    try:
        link.start()  # a bad certificate or key file fails here, before any connection
    except (OSError, ValueError) as exc:
        raise StartupError(f"mqtt.tls: {one_line(str(exc))}") from None


def preflight(cfg: Config) -> list[str]:
    """What `run` would refuse at start-up, found without opening a camera or a broker connection."""
    problems = []
    try:
        build_inspector(cfg)
    except StartupError as exc:
        problems.append(f"model: {exc}")
    if cfg.mqtt.enabled:
        try:
            broker_link(cfg, "check").check_files()
        except ConfigError as exc:
            problems.append(one_line(str(exc)))
        except (OSError, ValueError) as exc:
            problems.append(f"mqtt.tls: {one_line(str(exc))}")
    return problems + preflight_source(cfg.source)


def broker_link(cfg: Config, base_topic: str, on_command=None, on_connection=None) -> MqttLink:
    """The MQTT link the config describes (not yet connected)."""
    return MqttLink(cfg.mqtt, base_topic, on_command, on_connection, client_id=cfg.mqtt_client_id,
                    password=resolve_mqtt_password(cfg.mqtt))
