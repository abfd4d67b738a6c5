"""The station page's link to a running station: what it reads, and commands it queues like MQTT ones.

Changes go through the station's CommandQueue, exactly as MQTT `cmd/<name>` messages do (validated on arrival,
applied by the main loop between two frames, answered on <base>/reply and reflected on <base>/state); the page
waits for its own reply by request_id.
"""
from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edge.core.files import read_limited
from edge.errors import StartupError
from edge.feedback import FeedbackStore, RecentFrames
from edge.publish.metrics import station_metrics
from edge.publish.messages import model_ref
from edge.status import StationStatus
from edge.text import one_line
from edge.mask_commands import MaskPreview
from edge.mask_store import StoredMaskError, load_mask
from edge.threshold_store import StoredThresholdError, load_threshold
from edge.web.live import LiveSink

if TYPE_CHECKING:
    from edge.config.schema import Config
    from edge.core.inspector import Inspector
    from edge.publish.history import HistorySink
    from edge.publish.mqtt import MqttLink

logger = logging.getLogger("lineguard")

REPLY_WAIT_S = 10.0
STATE_CACHE_S = 0.25  # /api/state is rebuilt at most this often, however many ask (a command's reply clears it)
CALIBRATION_SCORES = Path("report") / "scores.csv"  # written by `lineguard train` into the bundle
MAX_CALIBRATION_SCORES = 20000
MAX_CALIBRATION_BYTES = 32 * 1024 * 1024
MAX_HISTORY_ROWS = 5000  # most verdicts one Review request reads from the history

ReplyListener = Callable[[str, bool, str, "str | None"], None]


@dataclass(frozen=True)
class PageView:
    """What the page reads of a running station, and where its commands go. Callables, since the model, the
    link and the evidence folder exist only after start-up and a reload replaces the config and the model."""

    cfg: Callable[[], Config]
    inspector: Callable[[], Inspector | None]  # None before a model is loaded
    stats: Callable[[], dict]  # the <base>/stats payload as of now (edge.publish.messages.stats_payload)
    status: StationStatus
    link: Callable[[], MqttLink | None]  # its connections are counted in /metrics
    evidence_folder: Callable[[], Path]
    command: Callable[..., None]  # queues a command as MQTT's cmd/<name> does (CommandQueue.on_command, origin=...)
    listen_replies: Callable[[ReplyListener], None]  # hear every reply to a command, from any interface
    history: Callable[[], HistorySink | None] = lambda: None  # the verdict history's sink; None when it is off


class StationWeb:
    """Owns the page's sink, the feedback store and the web server thread of one station."""

    def __init__(self, view: PageView) -> None:
        cfg = view.cfg()
        self.view = view
        self.frames = RecentFrames(int(cfg.feedback.keep_frames_mb * 1e6))
        self.feedback = FeedbackStore(cfg.feedback_dir, self.frames, int(cfg.feedback.quota_mb * 1e6),
                                      int(cfg.storage.reserve_mb * 1e6))
        self.feedback.on_filed = self._filed
        self.sink = LiveSink(cfg.web.recent_verdicts, self.frames, lambda: view.cfg().inference.roi, cfg.web.live_fps)
        self.sinks = [self.sink]
        self.server = self.metrics_server = self.metrics = None
        self.extra_routes: list = []  # more Starlette routes on the same server (e.g. /metrics); add before start()
        self.keep_serving = cfg.web.keep_serving_after_replay  # or `run --keep-serving`
        self._waiting: dict[str, dict] = {}
        self._replied = threading.Condition()
        self._calibration_cache: tuple[Path, list[dict]] | None = None
        self._state_cache: tuple[float, dict] | None = None
        self._state_lock = threading.Lock()
        self._mask_preview = MaskPreview()
        view.listen_replies(self._on_reply)

    # --- lifecycle ---

    def start(self) -> None:
        """Serve the page (web.enabled) and the metrics: after the station exists, before the MQTT link starts."""
        view = self.view
        cfg = view.cfg()
        web = cfg.web
        self.metrics = station_metrics(cfg.metrics, web.enabled, view.stats, view.status, view.link())
        if cfg.metrics.enabled:
            self._serve_metrics(cfg.metrics)
        if not web.enabled:
            return
        from edge.web.app import build_app
        from edge.web.auth import Guard, check_web_password, resolve_web_password
        from edge.web.server import WebServer

        password = resolve_web_password(web)
        problem = check_web_password(web, password)
        if problem is not None:
            raise StartupError(problem)
        app = build_app(self, Guard(web, password), web.live_fps, self.extra_routes, self.metrics)
        self.server = WebServer(app, web.host, web.port, web.read_timeout_s, web.max_connections)
        self.server.start()

    def _serve_metrics(self, settings) -> None:
        """metrics.port: the exposition alone, on a server with the page's limits on slow or silent clients."""
        from edge.web.server import WebServer

        self.metrics_server = WebServer(self.metrics.asgi_app(), settings.host, settings.port,
                                        settings.read_timeout_s, settings.max_connections, setting="metrics.port",
                                        label="Prometheus metrics", path="metrics")
        self.metrics_server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.sink.live.close()
            self.server.stop()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        self.feedback.close()

    @property
    def url(self) -> str | None:
        """Where the page is served; None when web.enabled is false."""
        return self.server.url if self.server is not None else None

    # --- what the page reads (from the server's threads) ---

    def inspecting(self) -> bool:
        return self.sink.started.is_set() and self.view.inspector() is not None

    def state(self) -> dict:
        """The running state, at most STATE_CACHE_S old (one build serves every reader meanwhile)."""
        with self._state_lock:
            cached = self._state_cache
            if cached is None or time.monotonic() - cached[0] >= STATE_CACHE_S:
                cached = self._state_cache = (time.monotonic(), self._build_state())
            return cached[1]

    def _build_state(self) -> dict:
        inspector, status, cfg = self.view.inspector(), self.view.status, self.view.cfg()
        low, high = inspector.calibration.threshold_range()
        try:
            stored = load_threshold(cfg.storage.dir)
        except StoredThresholdError as exc:
            stored = {"error": str(exc)}
        try:
            mask = load_mask(cfg.storage.dir)
        except StoredMaskError as exc:
            mask = {"error": str(exc)}
        return {"stored_mask": mask, "mask_in_force": inspector.stored_polygons,
                "config_polygons": cfg.inference.ignore_polygons, "mask_dropped": status.mask_dropped,
                "frame_size": inspector.frame_size,"device_id": cfg.device_id, "model": model_ref(inspector.bundle), "threshold": inspector.threshold,
                "bundle_threshold": inspector.calibration.threshold, "configured_threshold": cfg.inference.threshold,
                "stored_threshold": stored, "threshold_range": [low, high], "source": status.source_state,
                "source_detail": status.source_detail, "last_reload_error": status.last_reload_error,
                "restart_required": status.restart_required, "threshold_dropped": status.threshold_dropped,
                "inspecting": self.inspecting(), "history": self.history_state(),
                "fitness": fitness_of(inspector.bundle)}

    def stats(self) -> dict:
        return self.view.stats()

    def recent(self) -> list[dict]:
        return list(self.sink.recent)

    def history_state(self) -> dict:
        """Whether the verdict history is kept and available, and why not."""
        sink = self.view.history()
        if sink is None:
            return {"enabled": False, "available": False, "reason": "history.enabled is false"}
        return {"enabled": True, "available": sink.history.available, "reason": sink.history.reason}

    def review_verdicts(self, query) -> list[dict]:
        """The Review list: the recent verdicts in memory and, before them, the history's (which outlive
        restarts), newest first. ValueError for a bad query."""
        from edge.publish.history_read import HistoryUnavailable, read_rows
        from edge.web.app import review_query, select_verdicts

        chosen = select_verdicts(self.recent(), query)
        sink = self.view.history()
        if sink is None:
            return chosen
        wanted, since, until, limit = review_query(query)
        limit = min(limit, MAX_HISTORY_ROWS)
        try:
            rows = read_rows(sink.history.path, since, until, wanted, limit, newest_first=True)
        except HistoryUnavailable:
            return chosen
        seen = {item["seq"] for item in chosen}
        for row in rows:
            if row["seq"] not in seen:
                seen.add(row["seq"])
                chosen.append(json.loads(row["message"]))
        chosen.sort(key=lambda item: (item["ts"], item["seq"]), reverse=True)
        return chosen[:limit]

    def threshold_audit(self) -> list[dict]:
        """The stored threshold's changes, newest first (edge.threshold_audit)."""
        from edge.threshold_audit import read_changes

        return read_changes(self.view.cfg().storage.dir)

    def _filed(self, seq: int, path: str) -> None:
        sink = self.view.history()
        if sink is not None:
            sink.note_feedback(seq, path)

    def evidence_file(self, seq: int, kind: str) -> Path | None:
        """The evidence JPEG of a verdict: kind "frame" or "heat"."""
        folder = self.view.evidence_folder()
        for path in sorted(folder.glob(f"{seq:09d}-*.jpg")):
            if path.stem.endswith("-heat") == (kind == "heat"):
                return path
        return None

    def evidence_seqs(self) -> set[int]:
        """The seqs that have evidence images (named <seq>-<image>.jpg)."""
        seqs = set()
        for path in self.view.evidence_folder().glob("*-heat.jpg"):
            head = path.name.split("-", 1)[0]
            if head.isdigit():
                seqs.add(int(head))
        return seqs

    def held(self) -> set[int]:
        return self.frames.seqs()

    def mask_preview(self, polygons, seq: int | None = None) -> list[dict]:
        """The held frames (the chosen one first) scored as recorded and with ``polygons`` added to the config's
        ignore polygons; ValueError for bad polygons or when no frame is held."""
        frames = self.frames.held()
        if not frames:
            raise ValueError("no frame is held in memory to preview on (feedback.keep_frames_mb)")
        chosen = [f for f in frames if f.seq == seq]
        rest = [f for f in frames if f.seq != seq]
        rows = self._mask_preview.preview(self.view.inspector(), rest + chosen, polygons)
        return rows[::-1]  # newest first, the chosen frame at the top

    def calibration_scores(self) -> list[dict]:
        """The bundle's own test scores (report/scores.csv), for the histogram; [] when it has none."""
        path = self.view.inspector().bundle.path / CALIBRATION_SCORES
        if self._calibration_cache is None or self._calibration_cache[0] != path:
            self._calibration_cache = (path, _read_scores(path))
        return self._calibration_cache[1]

    # --- commands ---

    def command(self, name: str, args: dict, origin: str = "page") -> dict:
        """Queue a command as MQTT would and wait for its reply: {"ok", "reason"}. ``origin`` is who sent it,
        for the threshold audit."""
        request_id = f"web-{secrets.token_hex(8)}"
        with self._replied:
            self._waiting[request_id] = {}
        self.view.command(name, json.dumps({**args, "request_id": request_id}).encode(), origin=origin)
        with self._replied:
            self._replied.wait_for(lambda: self._waiting[request_id], REPLY_WAIT_S)
            reply = self._waiting.pop(request_id)
        return reply or {"ok": False, "reason": f"no answer within {REPLY_WAIT_S:g} s"}

    def _on_reply(self, command: str, ok: bool, reason: str, request_id: str | None) -> None:
        with self._state_lock:
            self._state_cache = None  # a command may have changed what the state says
        with self._replied:
            if request_id in self._waiting:
                self._waiting[request_id] = {"ok": ok, "reason": reason, "command": command}
                self._replied.notify_all()


def _read_scores(path: Path) -> list[dict]:
    """The rows of a bundle's scores.csv; [] when it has none, or (with a warning naming it) cannot be read."""
    try:  # bounded, regular files only: a FIFO cannot hang the page, /dev/zero cannot fill the memory
        text = read_limited(path, MAX_CALIBRATION_BYTES).decode("utf-8")
        rows = itertools.islice(csv.DictReader(io.StringIO(text, newline="")), MAX_CALIBRATION_SCORES)
        return [{"score": float(row["score"]), "label": int(row["label"])} for row in rows]
    except FileNotFoundError:
        return []
    except OSError as exc:
        logger.warning("%s: cannot read the calibration scores: %s", path, exc.strerror or exc)
    except (ValueError, KeyError, TypeError, csv.Error) as exc:  # ValueError: bad UTF-8 or numbers
        logger.warning("%s: not a calibration scores table: %s", path, one_line(str(exc))[:200])
    return []


NOT_MEASURED = "not measured for this bundle: `lineguard evaluate` on labelled images measures it"


def fitness_of(bundle) -> dict:
    """The trainer's verdict on the bundle (fit or not, defects caught and good parts rejected at its threshold)."""
    summary = (bundle.metrics or {}).get("fitness") if isinstance(bundle.metrics, dict) else None
    if not isinstance(summary, dict) or not isinstance(summary.get("text"), str):
        return {"verdict": None, "text": NOT_MEASURED}
    return {key: summary.get(key) for key in ("verdict", "text", "threshold", "caught", "false_rejects")}
