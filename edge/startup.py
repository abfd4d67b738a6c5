"""What `run` opens before it inspects, in order, and what `check-config` checks without opening anything."""
from __future__ import annotations

import logging

from edge.capture.sources import CaptureError, FrameSource, SourceSettings, open_source
from edge.config.schema import Config, ConfigError, resolve_mqtt_password
from edge.core.bundle import BundleError
from edge.core.inspector import Inspector
from edge.core.preprocess import ImageError, read_image
from edge.core.runtime import ModelLoadError
from edge.publish.mqtt import BrokerSettings, MqttLink
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
        return open_source(source_settings(cfg, grayscale), on_state)
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
            MqttLink(broker_settings(cfg), "check").check_files()
        except ConfigError as exc:
            problems.append(one_line(str(exc)))
        except (OSError, ValueError) as exc:
            problems.append(f"mqtt.tls: {one_line(str(exc))}")
    path = cfg.source.path
    if cfg.source.kind == "folder" and not path.is_dir():
        problems.append(f"source.path: image folder not found: {path}")
    elif cfg.source.kind == "video" and not path.is_file():
        problems.append(f"source.path: video file not found: {path}")
    return problems


def source_settings(cfg: Config, grayscale: bool) -> SourceSettings:
    s = cfg.source
    return SourceSettings(
        kind=s.kind, path=s.path, url=s.url, index=s.index, fps=s.fps, loop=s.loop, width=s.width, height=s.height,
        grayscale=grayscale, reconnect_initial_s=s.reconnect_initial_s, reconnect_max_s=s.reconnect_max_s,
        read_timeout_s=s.read_timeout_s,
    )


def broker_settings(cfg: Config) -> BrokerSettings:
    m = cfg.mqtt
    return BrokerSettings(
        host=m.host, port=m.port, client_id=m.client_id or f"lineguard-{cfg.device_id}", username=m.username,
        password=resolve_mqtt_password(m), keepalive_s=m.keepalive_s, max_inflight=m.max_inflight,
        reconnect_min_s=m.reconnect_min_s, reconnect_max_s=m.reconnect_max_s, tls_enabled=m.tls.enabled,
        tls_ca_file=m.tls.ca_file, tls_cert_file=m.tls.cert_file, tls_key_file=m.tls.key_file,
    )
