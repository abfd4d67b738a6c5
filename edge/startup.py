"""What `run` opens before it inspects, in order, and what `check-config` checks without opening anything."""
from __future__ import annotations

import logging
import os
import platform
import tempfile

from edge.capture.base import CaptureError, FrameSource
from edge.capture.registry import open_source, preflight_source
from edge.config.errors import ConfigError
from edge.config.schema import Config, StorageConfig
from edge.config.secrets import resolve_mqtt_password
from edge.core.bundle import BundleError
from edge.core.inspector import Inspector
from edge.core.preprocess import ImageError, read_image
from edge.core.runtime import ModelLoadError, cpu_features, runtime_version
from edge.errors import StartupError, StorageError
from edge.io.plant import preflight_io, preflight_opcua
from edge.publish import outbox
from edge.core.space import free_bytes
from edge.publish.evidence import EvidenceStore
from edge.publish.messages import model_ref
from edge.publish.mqtt import MqttLink
from edge.promotion import active_model
from edge.mask_store import StoredMaskError, apply_stored_mask
from edge.text import one_line
from edge.threshold_store import (DroppedThreshold, StoredThresholdError, load_threshold, stored_model,
                                  stored_threshold_problem, threshold_path)
from edge.web.auth import check_web_password, resolve_web_password

logger = logging.getLogger("lineguard")

OUTBOX_FILE = "outbox.sqlite3"
EVIDENCE_FOLDER = "evidence"
PROBE_BYTES = 64 * 1024  # what check-config writes (and removes) to see that storage.dir takes data
# Below this the outbox would soon fail to record a verdict, and a verdict is never published without its
# seq recorded: run exits 75 at start instead (systemd tries again), check-config says so.
OUTBOX_MIN_FREE_BYTES = 1_000_000


def log_runtime() -> None:
    """One start-up line: the model runtime, the Python, and the CPU's SIMD extensions the runtime can use."""
    logger.info("runtime %s on Python %s; the CPU offers %s (LiteRT's XNNPACK kernels use the best of these)",
                runtime_version(), platform.python_version(), cpu_features())


def build_inspector(cfg: Config) -> tuple[Inspector, DroppedThreshold | None]:
    """The bundle and the device's ROI, ignore mask and threshold override; StartupError on any problem. Also a
    stored threshold that was not applied because it is another model's, for the caller to drop (drop_threshold)
    once it runs this inspector: a refused reload must leave the running model's stored threshold alone."""
    mask = None
    try:
        if cfg.inference.ignore_mask is not None:
            mask = read_image(cfg.inference.ignore_mask, "gray")
        roi = tuple(cfg.inference.roi) if cfg.inference.roi else None
        inspector = Inspector(active_model(cfg), threads=cfg.inference.threads, roi=roi, ignore_mask=mask,
                              ignore_polygons=cfg.inference.ignore_polygons, threshold=cfg.inference.threshold,
                              min_region_px=cfg.inference.min_region_px, quality_gate=cfg.inference.quality_gate)
    except (BundleError, ModelLoadError, ImageError) as exc:
        raise StartupError(one_line(str(exc))) from None
    override = cfg.inference.threshold
    problem = None if override is None else inspector.calibration.threshold_problem(override, inspector.bundle.name)
    if problem is not None:
        raise StartupError(f"inference.threshold: {problem}")
    try:  # stored polygons add to the config's; another model's are kept on the inspector, for drop_threshold
        inspector.mask_dropped = apply_stored_mask(inspector, cfg.storage.dir)
    except StoredMaskError as exc:
        raise StartupError(str(exc)) from None
    return inspector, apply_stored_threshold(inspector, cfg.storage.dir)


def apply_stored_threshold(inspector: Inspector, storage_dir) -> DroppedThreshold | None:
    """A threshold set by command outranks the configured one until it is cleared (edge.threshold_store), but
    only for the model it names by sha256; another model's (or one naming none) is returned, not applied."""
    try:
        record = load_threshold(storage_dir)
    except StoredThresholdError as exc:
        raise StartupError(str(exc)) from None
    if record is None:
        return None
    running = model_ref(inspector.bundle)
    if stored_model(record)["sha256"] != running["sha256"]:
        return DroppedThreshold(threshold_path(storage_dir), record["threshold"], stored_model(record), running,
                                inspector.threshold)
    problem = stored_threshold_problem(record, inspector.calibration, inspector.bundle.name, storage_dir)
    if problem is not None:
        raise StartupError(problem)
    logger.info("threshold %.6g set by command (%s, %s) is in force; `lineguard threshold --reset` goes back to "
                "%.6g", record["threshold"], record.get("set_by", "?"), record.get("ts", "?"), inspector.threshold)
    inspector.set_threshold(record["threshold"])
    return None


def drop_threshold(dropped: DroppedThreshold | None, status, inspector: Inspector | None = None) -> None:
    """Once its inspector runs: say loudly that another model's stored threshold (or, with ``inspector``, stored
    mask) was not applied, rename its file aside (kept for a person) and show the event on the state topic until
    the next start or reload."""
    status.threshold_dropped = None if dropped is None else dropped.payload()
    mask = inspector.mask_dropped if inspector is not None else None
    status.mask_dropped = None if mask is None else mask.payload()
    for event in (dropped, mask):
        if event is not None:
            aside = event.set_aside()
            logger.warning("%s%s", event.message(), f"; the file is kept as {aside.name}" if aside else "")


def open_outbox(cfg: Config) -> outbox.Outbox:
    """The outbox in storage.dir (a damaged one is moved aside and a fresh one started); StorageError if the
    folder cannot hold it."""
    storage = cfg.storage.dir
    try:
        storage.mkdir(parents=True, exist_ok=True)
        opened = outbox.open_outbox(storage / OUTBOX_FILE, cfg.storage.outbox_max_messages,
                                    cfg.storage.outbox_when_full, cfg.storage.sync)
        problem = outbox_space_problem(storage)
    except (OSError, outbox.OutboxError) as exc:
        raise StorageError(f"storage.dir {storage}{free_text(storage)}: {one_line(str(exc))}") from None
    if problem is not None:
        opened.close()
        raise StorageError(problem)
    return opened


def free_text(folder) -> str:
    """' (N bytes free)' for an error line about storage.dir; '' when even that cannot be read."""
    try:
        return f" ({free_bytes(folder)} bytes free)"
    except OSError:
        return ""


def outbox_space_problem(folder) -> str | None:
    """Why the outbox could not go on recording verdicts in ``folder``; None when there is room."""
    free = free_bytes(folder)
    if free >= OUTBOX_MIN_FREE_BYTES:
        return None
    return (f"storage.dir {folder}: {free} bytes free on its file system, below the {OUTBOX_MIN_FREE_BYTES} the "
            "outbox needs to record verdicts; free space there")


def open_evidence(storage: StorageConfig) -> EvidenceStore:
    return EvidenceStore(storage.dir / EVIDENCE_FOLDER, int(storage.evidence_quota_mb * 1e6),
                         int(storage.reserve_mb * 1e6))


def preflight_storage(storage: StorageConfig) -> list[str]:
    """What open_outbox would refuse, found without leaving anything behind: the folder (or the nearest one
    that exists, when run would create it) takes data, an existing outbox can be opened, and there is room for
    it. A damaged outbox or free space below storage.reserve_mb are warnings: run goes on with them."""
    folder = existing = storage.dir
    try:
        while not existing.exists() and existing.parent != existing:
            existing = existing.parent
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is not a folder")
        with tempfile.TemporaryFile(dir=existing) as probe:  # unnamed where supported; gone when closed
            probe.write(bytes(PROBE_BYTES))
            probe.flush()
            os.fsync(probe.fileno())
        free = free_bytes(existing)
        if (folder / OUTBOX_FILE).exists():
            outbox.check_file(folder / OUTBOX_FILE)
    except outbox.OutboxCorrupt as exc:
        logger.warning("%s; run will move it aside (kept) and start a fresh outbox", one_line(str(exc)))
    except (OSError, outbox.OutboxError) as exc:
        return [f"storage.dir {folder}: {one_line(str(exc))}"]
    if free < OUTBOX_MIN_FREE_BYTES:
        return [outbox_space_problem(folder)]
    if free < storage.reserve_mb * 1e6:
        logger.warning("storage.dir %s: %.0f MB free, below storage.reserve_mb %g: evidence and feedback are not "
                       "saved until space is freed", folder, free / 1e6, storage.reserve_mb)
    return []


def open_frames(cfg: Config, grayscale: bool, on_state) -> FrameSource:
    try:
        return open_source(cfg.source, grayscale, on_state)
    except CaptureError as exc:
        raise StartupError(str(exc)) from None


def start_link(link: MqttLink, sender) -> None:
    """The broker link, then the outbox's sender on it."""
    try:
        link.start()  # a bad certificate or key file fails here, before any connection
    except (OSError, ValueError) as exc:
        raise StartupError(f"mqtt.tls: {one_line(str(exc))}") from None
    sender.start()


def preflight(cfg: Config) -> list[str]:
    """What `run` would refuse at start-up for a person to fix (config, bundle, source, broker files), found
    without opening a camera or a broker connection. Storage is checked apart (preflight_storage): run
    exits 75 on it, and systemd retries."""
    problems = []
    try:
        built = build_inspector(cfg)
    except StartupError as exc:
        problems.append(f"model: {exc}")
    else:
        inspector, dropped = built
        for event in (dropped, inspector.mask_dropped):  # run goes on with it: a warning, not a problem
            if event is not None:
                logger.warning("%s; run will rename the file aside", event.message())
    if cfg.mqtt.enabled:
        try:
            broker_link(cfg, "check").check_files()
        except ConfigError as exc:
            problems.append(one_line(str(exc)))
        except (OSError, ValueError) as exc:
            problems.append(f"mqtt.tls: {one_line(str(exc))}")
    return (problems + preflight_source(cfg.source) + preflight_io(cfg.io) + preflight_opcua(cfg.opcua)
            + preflight_web(cfg))


def preflight_web(cfg: Config) -> list[str]:
    """The station page's password: an exposed page needs one, and its file must be readable."""
    try:
        problem = check_web_password(cfg.web, resolve_web_password(cfg.web))
    except ConfigError as exc:
        problem = one_line(str(exc))
    return [problem] if problem else []


def broker_link(cfg: Config, base_topic: str, on_command=None, on_connection=None) -> MqttLink:
    """The MQTT link the config describes (not yet connected)."""
    settings = cfg.mqtt.model_copy(update={"tcp_nodelay": cfg.mqtt_nodelay})  # resolved for this run's link
    return MqttLink(settings, base_topic, on_command, on_connection, client_id=cfg.mqtt_client_id,
                    password=resolve_mqtt_password(cfg.mqtt))
