"""`lineguard threshold`, `feedback` and `shadow`: the station page's changes from a shell on the device.

They talk to the running daemon's page (web.host/web.port, over loopback when it listens on every interface),
so a change takes the same path as on the page and over MQTT. With no daemon running, `threshold --reset`
removes the stored threshold itself and `feedback --image` files an image directly.
"""
from __future__ import annotations

import http.cookiejar
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

from edge.exitcodes import EX_CONFIG, EX_DATAERR, EX_OK, EX_TEMPFAIL

REQUEST_TIMEOUT_S = 20.0


class PageClient:
    """A session with the station page: cookie, CSRF token, and the password when it needs one."""

    def __init__(self, web) -> None:
        host = "127.0.0.1" if web.host in ("0.0.0.0", "localhost") else ("::1" if web.host == "::" else web.host)
        self.base = f"http://{f'[{host}]' if ':' in host else host}:{web.port}"
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        self.web = web
        self.csrf = ""

    def _call(self, path: str, data: dict | None = None) -> tuple[int, dict]:
        body = None if data is None else json.dumps(data).encode()
        request = urllib.request.Request(self.base + path, data=body, headers={
            "Content-Type": "application/json", "X-CSRF-Token": self.csrf, "X-Lineguard-Client": "cli"})
        try:
            with self.opener.open(request, timeout=REQUEST_TIMEOUT_S) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def open(self) -> None:
        """Start a session; logs in when the page needs the password. OSError when no daemon answers."""
        from edge.web.auth import resolve_web_password

        _, session = self._call("/api/session")
        self.csrf = session["csrf"]
        if session["password_required"] and not session["authenticated"]:
            password = resolve_web_password(self.web)
            if not password:
                raise PermissionError(f"the page needs its password: set ${self.web.password_env} or web.password_file")
            status, answer = self._call("/api/login", {"password": password})
            if status != 200:
                raise PermissionError(answer.get("reason", "login refused"))

    def command(self, path: str, data: dict) -> dict:
        status, answer = self._call(path, data)
        return answer if status in (200, 409) else {"ok": False, "reason": answer.get("reason", f"HTTP {status}")}


def add_station_commands(sub) -> None:
    p = sub.add_parser("threshold", help="set the running station's threshold, or go back to the bundle's",
                       description="Apply a threshold on the running daemon (like MQTT cmd/threshold: stored in "
                                   "storage.dir, kept across reloads and restarts) or, with --reset, clear the "
                                   "stored one (like cmd/threshold_reset). Without a running daemon --reset "
                                   "removes the stored threshold file itself.")
    p.add_argument("--config", type=Path, default=Path("config.yaml"), help="the daemon's config file")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("value", nargs="?", type=float, help="new threshold (a part fails when score >= it)")
    what.add_argument("--reset", action="store_true", help="back to inference.threshold or the bundle's threshold")
    p.add_argument("--why", help="the reason, kept with the change in the threshold audit (shown on the page)")
    p.set_defaults(handler=cmd_threshold)
    p = sub.add_parser("feedback", help="label a recent frame for retraining (false reject / missed defect)",
                       description="Save a recent frame, lossless, into the feedback folder (MVTec AD layout: "
                                   "train/good for a good part, test/<defect> for a missed defect). By seq from the "
                                   "running daemon (like MQTT cmd/feedback), or --image FILE directly.")
    p.add_argument("--config", type=Path, default=Path("config.yaml"), help="the daemon's config file")
    p.add_argument("label", choices=("good", "defect"), help="good: a false reject; defect: a missed defect")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--seq", type=int, help="the verdict's seq (from its result message or the page)")
    source.add_argument("--image", type=Path, help="an image file to add as it is (PNG is copied, others converted)")
    p.add_argument("--defect", default="defect", help="folder name under test/ for a defect (default: defect)")
    p.set_defaults(handler=cmd_feedback)
    p = sub.add_parser("shadow", help="score a candidate bundle beside the running model, or stop it",
                       description="Have the running daemon score every frame with a candidate bundle too (like "
                                   "MQTT cmd/shadow): compared with the live verdicts in stats and on the page, "
                                   "never published. A bundle that cannot be used is refused with the reason.")
    p.add_argument("--config", type=Path, default=Path("config.yaml"), help="the daemon's config file")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("model", nargs="?", type=Path, help="the candidate bundle folder")
    what.add_argument("--stop", action="store_true", help="stop the shadow model")
    p.set_defaults(handler=cmd_shadow)
    for name, text in (("promote", "make the running shadow model the live one (through a reload; audited)"),
                       ("rollback", "make the model before the last promote or rollback live again (audited)")):
        p = sub.add_parser(name, help=text, description=f"{text[0].upper()}{text[1:]}, like MQTT cmd/{name}. The "
                           "choice is kept in storage.dir/model.json while the config's model: stays; every switch "
                           "is a line in storage.dir/model-audit.log.")
        p.add_argument("--config", type=Path, default=Path("config.yaml"), help="the daemon's config file")
        p.set_defaults(handler=cmd_switch, command=name)


def _config(path: Path):
    from edge.config.errors import ConfigError
    from edge.config.load import load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None


AWAY_HINT = " (is the daemon running with web.enabled?)"


def _page(cfg, command: str, away_hint: str | None = AWAY_HINT) -> tuple[PageClient, int | None]:
    """A session with the running daemon's page, and None when it is open; EX_CONFIG for a password problem;
    EX_TEMPFAIL when no page answers (said with ``away_hint``; not said when it is None: the caller goes on)."""
    client = PageClient(cfg.web)
    try:
        client.open()
    except PermissionError as exc:  # before OSError, of which it is one
        print(f"lineguard {command}: {exc}", file=sys.stderr)
        return client, EX_CONFIG
    except OSError:
        if away_hint is not None:
            print(f"lineguard {command}: no station page answers at {client.base}{away_hint}", file=sys.stderr)
        return client, EX_TEMPFAIL
    return client, None


def _answer(answer: dict) -> int:
    print(answer.get("reason", ""), file=sys.stdout if answer.get("ok") else sys.stderr)
    return EX_OK if answer.get("ok") else EX_DATAERR


def cmd_threshold(args) -> int:
    cfg = _config(args.config)
    if cfg is None:
        return EX_CONFIG
    client, refused = _page(cfg, "threshold", None if args.reset else AWAY_HINT)
    if refused == EX_TEMPFAIL and args.reset:
        return _reset_without_daemon(cfg, args.why)
    if refused is not None:
        return refused
    why = {"why": args.why} if args.why else {}
    if args.reset:
        return _answer(client.command("/api/threshold/reset", why))
    return _answer(client.command("/api/threshold", {"threshold": args.value, **why}))


def _reset_without_daemon(cfg, why: str | None) -> int:
    """No daemon answers: remove the stored threshold file here, audited like the daemon's reset."""
    from edge.threshold_audit import record_change
    from edge.threshold_store import StoredThresholdError, clear_threshold, load_threshold, threshold_path

    try:
        stored = load_threshold(cfg.storage.dir)
    except StoredThresholdError:
        stored = None
    removed = clear_threshold(cfg.storage.dir)
    if removed:
        record_change(cfg.storage.dir, "cli", "reset", stored["threshold"] if stored else None, None,
                      why or "the daemon was not running")
    print(f"{threshold_path(cfg.storage.dir)} {'removed' if removed else 'was not there'}; the daemon is not "
          "running and uses the configured or bundle threshold when it starts")
    return EX_OK


def cmd_shadow(args) -> int:
    cfg = _config(args.config)
    if cfg is None:
        return EX_CONFIG
    client, refused = _page(cfg, "shadow")
    if refused is not None:
        return refused
    body = {"stop": True} if args.stop else {"model": str(args.model.expanduser().resolve())}
    return _answer(client.command("/api/shadow", body))


def cmd_switch(args) -> int:
    """`lineguard promote` and `lineguard rollback`."""
    cfg = _config(args.config)
    if cfg is None:
        return EX_CONFIG
    client, refused = _page(cfg, args.command)
    if refused is not None:
        return refused
    return _answer(client.command(f"/api/{args.command}", {}))


def cmd_feedback(args) -> int:
    from edge.labels import label_folder

    try:
        folder = label_folder(args.label, args.defect)  # the daemon's own check, before anything is written or sent
    except ValueError as exc:
        print(f"lineguard feedback: --defect: {exc}", file=sys.stderr)
        return EX_DATAERR
    cfg = _config(args.config)
    if cfg is None:
        return EX_CONFIG
    if args.image is not None:
        return _file_image(args.image, cfg, folder)
    client, refused = _page(cfg, "feedback", "; use --image for a file")
    if refused is not None:
        return refused
    return _answer(client.command("/api/feedback", {"seq": args.seq, "label": args.label, "defect": args.defect}))


def _file_image(image: Path, cfg, label_folder) -> int:
    """Copy (PNG) or convert (anything else, lossless PNG from what it decodes to) an image into the folder,
    within the daemon's limits: one label per image, feedback.quota_mb and storage.reserve_mb."""
    import cv2

    from edge.core.files import write_bytes_atomic
    from edge.core.preprocess import ImageError, read_image

    folder = cfg.feedback_dir
    target = folder / label_folder / f"{image.stem}.png"
    other = [p for p in folder.glob(f"*/*/{image.stem}.png") if p.parent != target.parent]
    if other:  # one label per image, as per seq
        print(f"lineguard feedback: {other[0]} is already labelled {other[0].parent.name}; an image takes one "
              "label: to correct it, delete that file, then label again", file=sys.stderr)
        return EX_DATAERR
    try:
        pixels = read_image(image, "bgr")  # a file training could not read never enters the folder
    except ImageError as exc:
        print(f"lineguard feedback: {exc}", file=sys.stderr)
        return EX_DATAERR
    # A PNG keeps its own bytes (depth, metadata); anything else becomes a PNG of what it decodes to.
    data = image.read_bytes() if image.suffix.lower() == ".png" else cv2.imencode(".png", pixels)[1].tobytes()
    problem = _room_problem(cfg, len(data))
    if problem is not None:
        print(f"lineguard feedback: {image} not saved: {problem}", file=sys.stderr)
        return EX_DATAERR
    write_bytes_atomic(target, data)
    print(f"{image} saved as {target}")
    return EX_OK


def _room_problem(cfg, size: int) -> str | None:
    """The daemon's own limits for the feedback folder (edge.feedback): its quota, then the outbox's reserve."""
    from edge.core.space import folder_bytes, reserve_problem
    from edge.feedback import quota_problem

    folder = cfg.feedback_dir
    return (quota_problem(folder, folder_bytes(folder), size, int(cfg.feedback.quota_mb * 1e6))
            or reserve_problem(folder, size, int(cfg.storage.reserve_mb * 1e6)))
