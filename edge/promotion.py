"""`promote` and `rollback`: the shadow candidate becomes the live model, or the model before it comes back.

Both go through the reload path (edge.control.prepare_reload, then Station.switch_to between two frames), so a
switch is atomic: the next frame is judged by the new model, or, when it cannot be loaded, nothing changes. The
choice is kept in storage.dir as ``model.json`` ({"model", "previous", "configured", "sha256", "ts"}): it outranks
the config's `model:` for as long as the config names the model it was made over (``configured``); once someone
edits `model:` the file is ignored, with a warning. Every switch, applied or refused, is one JSON line in
``storage.dir/model-audit.log`` and a log line.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from edge.core.files import read_limited, write_json_atomic
from edge.publish.messages import model_ref, to_json, utc_now

logger = logging.getLogger("lineguard")

MODEL_FILE = "model.json"
AUDIT_FILE = "model-audit.log"
MAX_FILE_BYTES = 64 * 1024


def _record_path(storage_dir: Path) -> Path:
    return Path(storage_dir) / MODEL_FILE


def load_choice(storage_dir: Path) -> dict | None:
    """The stored record, or None when there is none or it cannot be read (then with a warning)."""
    path = _record_path(storage_dir)
    try:
        record = json.loads(read_limited(path, MAX_FILE_BYTES).decode("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as exc:
        logger.warning("%s: not a model choice (%s); the config's model is used", path, exc)
        return None
    if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in ("model", "configured")):
        logger.warning("%s: not a model choice; the config's model is used", path)
        return None
    return record


def active_model(cfg) -> Path:
    """The model to run: a promoted or rolled-back one while the config still names the model it was chosen
    over, else the config's `model:`."""
    record = load_choice(cfg.storage.dir)
    if record is None:
        return cfg.model
    if record["configured"] != str(cfg.model):
        logger.warning("model %s chosen by %s is not used: the config now names %s", record["model"],
                       record.get("action", "promote"), cfg.model)
        return cfg.model
    return Path(record["model"])


def _audit(storage_dir: Path, entry: dict) -> None:
    try:
        with open(Path(storage_dir) / AUDIT_FILE, "ab") as log:
            log.write(to_json(entry) + b"\n")
    except OSError as exc:
        logger.error("cannot write %s: %s", Path(storage_dir) / AUDIT_FILE, exc.strerror or exc)


def _ref(inspector) -> dict:
    return {**model_ref(inspector.bundle), "path": str(inspector.bundle.path)}


def switch_model(name: str, args, *, cfg, running: Callable, shadow, reload: Callable[[], None], status,
                 reply) -> None:
    """Act on cmd/promote or cmd/rollback, between two frames: store the choice, reload, check, audit, reply.
    ``running()`` is the live inspector, ``status`` the StationStatus (its last_reload_error)."""
    storage_dir, before = cfg.storage.dir, _ref(running())
    record = load_choice(storage_dir)
    if name == "promote":
        candidate = shadow.candidate if shadow is not None else None
        if candidate is None:
            reply(name, False, "no shadow model to promote: start one with `lineguard shadow PATH`", args.request_id)
            return
        target = candidate.inspector.bundle.path
    else:
        if record is None or record.get("configured") != str(cfg.model) or not record.get("previous"):
            reply(name, False, "nothing to roll back: no model was promoted over the configured one",
                  args.request_id)
            return
        target = Path(record["previous"])
    # What the shadow comparison showed when the swap was made: frames compared, agreement, both fail rates.
    evidence = shadow.stats() if shadow is not None else None
    chosen = {"action": name, "model": str(target), "previous": before["path"], "configured": str(cfg.model),
              "ts": utc_now()}
    write_json_atomic(_record_path(storage_dir), chosen)
    reload()
    after = _ref(running())
    ok = after["path"] == str(target) and status.last_reload_error is None
    if not ok:  # the reload kept the running model: so does the stored choice
        if record is None:
            _record_path(storage_dir).unlink(missing_ok=True)
        else:
            write_json_atomic(_record_path(storage_dir), record)
    elif name == "promote" and shadow is not None:
        shadow.stop("promoted to live")
    reason = (f"{name}: {before['name']} ({before['sha256'][:12]}) -> {after['name']} ({after['sha256'][:12]})"
              if ok else f"{name} refused: {status.last_reload_error or 'the model did not change'}; "
              f"{before['name']} stays live")
    _audit(storage_dir, {"ts": utc_now(), "action": name, "ok": ok, "from": before, "to": after if ok else
                         {"path": str(target)}, "reason": reason, "evidence": evidence, "request_id": args.request_id})
    (logger.warning if ok else logger.error)("audit: %s", reason)
    reply(name, ok, reason, args.request_id)
