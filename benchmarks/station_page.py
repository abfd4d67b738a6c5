"""Case 8, the station page's cost: pipeline_efficiency_256 (case 1's measure) with the page served and a
viewer streaming the live view, side by side with the page closed (served, nobody watching).

The viewer does what the page's live view does: it follows the server-sent events and fetches each live
picture they announce (web.live_fps, 4 a second by default), from this process, while the daemon replays at
full speed. Each repeat runs bare invoke, page closed and page open in turn (rotating the order), so all three
see the same noise from other work on the machine.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from benchmarks.common import log, median, rounded, run_daemon, run_json, write_config
from benchmarks.pipeline import GOAL, SIZE_PX, WARMUP_FRAMES, bench
from tests.support.broker import free_port

REPEATS = 3
VIEWER_CONNECT_WAIT_S = 60.0


class LiveViewer(threading.Thread):
    """Follows /api/live/events and fetches /api/live.jpg for each event, until the daemon goes away."""

    def __init__(self, url: str) -> None:
        super().__init__(name="live-viewer", daemon=True)
        self.url = url
        self.pictures = 0
        self.picture_bytes = 0

    def run(self) -> None:
        deadline_s = time.monotonic() + VIEWER_CONNECT_WAIT_S
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while time.monotonic() < deadline_s:
                try:
                    self._follow(client)
                    return
                except httpx.TransportError:
                    time.sleep(0.05)  # not listening yet

    def _follow(self, client: httpx.Client) -> None:
        try:
            with client.stream("GET", "api/live/events", timeout=None) as events:
                for line in events.iter_lines():
                    if line.startswith("data:"):
                        picture = client.get("api/live.jpg")
                        self.pictures += picture.status_code == 200
                        self.picture_bytes += len(picture.content)
        except httpx.RemoteProtocolError:
            pass  # the daemon finished its replay and closed the stream


def daemon_fps(bundle: Path, frames: Path, threshold: float, count: int, port: int, work: Path, name: str,
               viewer: bool) -> tuple[float, int]:
    """One full-speed replay with the page served; its steady fps and the pictures the viewer got."""
    web_port = free_port()
    config = write_config(work / f"config-{name}.yaml", model=bundle, frames=frames, port=port,
                          storage=work / f"state-{name}", threshold=threshold,
                          web={"enabled": True, "port": web_port})
    watcher = LiveViewer(f"http://127.0.0.1:{web_port}/") if viewer else None
    if watcher is not None:
        watcher.start()
    run = run_daemon(config, work)
    if run.delivered != count:
        raise RuntimeError(f"only {run.delivered} of {count} verdicts acknowledged:\n{run.log_tail()}")
    if watcher is not None:
        watcher.join(10)
    return run.steady_fps(WARMUP_FRAMES), watcher.pictures if watcher is not None else 0


def run(mode: str = "quick") -> dict:
    fps: dict[str, list[float]] = {"bare": [], "closed": [], "open": []}
    pictures: list[int] = []
    with bench("station-page", mode) as setup:
        bundle, frames, threshold, count, work = setup.bundle, setup.frames, setup.threshold, setup.count, setup.work
        sample_image = str(sorted(frames.glob("*.png"))[0])
        log("case 8: station page, %d frames of %dx%d, %d rounds of bare / page closed / page open", count,
            SIZE_PX, SIZE_PX, REPEATS)
        for repeat in range(REPEATS):
            steps = ["bare", "closed", "open"]
            for step in steps[repeat:] + steps[:repeat]:
                if step == "bare":
                    fps["bare"].append(run_json("benchmarks.bare_invoke", bundle / "model.tflite", 1, count,
                                                WARMUP_FRAMES, sample_image)["fps"])
                    continue
                value, shown = daemon_fps(bundle, frames, threshold, count, setup.port, work, f"{step}-{repeat}",
                                          viewer=step == "open")
                fps[step].append(value)
                if step == "open":
                    pictures.append(shown)
            log("  round %d: bare %.1f fps, page closed %.1f fps, page open %.1f fps (%d live pictures)",
                repeat + 1, fps["bare"][-1], fps["closed"][-1], fps["open"][-1], pictures[-1])
    ratios = {step: [d / b for d, b in zip(fps[step], fps["bare"])] for step in ("closed", "open")}
    opened = rounded(median(ratios["open"]))
    return {
        "pipeline_efficiency_256_page_open": opened,
        "station_page_256": {
            "goal": GOAL, "met": opened is not None and opened >= GOAL, "mode": mode, "frames": count,
            "efficiency_page_closed": rounded(median(ratios["closed"])), "efficiency_page_open": opened,
            "ratio_per_round": {step: [rounded(r) for r in values] for step, values in ratios.items()},
            "fps": {step: [rounded(v, 2) for v in values] for step, values in fps.items()},
            "live_pictures_per_open_run": pictures,
        },
    }
