"""latest.md: the figures of latest.json (and soak.json when present) as Markdown tables."""
from __future__ import annotations

import json

from benchmarks import realpart
from benchmarks.common import RESULTS_DIR

ALL = "make bench"
QUICK = "make bench-quick"


def _get(data: dict, *path, default=None):
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return default
        data = data[key]
    return data


def _fmt(value, unit: str = "", digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        text = f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    else:
        text = str(value)
    return f"{text}{unit}"


def _met(flag) -> str:
    return {True: "met", False: "**not met**"}.get(flag, "")


def headline_rows(r: dict) -> list[tuple[str, str, str, str, str]]:
    p1 = _get(r, "pipeline_256", "by_threads", "1") or {}
    p2 = _get(r, "pipeline_256", "by_threads", "2") or {}
    mn = r.get("mnist1") or {}
    kc = r.get("keras_compare") or {}
    ms = kc.get("ms_per_frame") or {}
    return [
        ("1. Pipeline efficiency 256x256, threads=1 (`pipeline_efficiency_256`)", _fmt(r.get("pipeline_efficiency_256")),
         ">= 0.90", _met(_get(r, "pipeline_256", "met")), f"`{QUICK}` or `{ALL}`"),
        ("   daemon / bare invoke fps (medians), threads=1",
         f"{_fmt(p1.get('daemon_fps_median'))} / {_fmt(p1.get('bare_invoke_fps_median'))}", "", "", f"`{ALL}`"),
        ("   same, by median frame interval; by CPU ms per frame",
         f"{_fmt(p1.get('efficiency_median_interval'))}; "
         f"{_fmt(_get(p1, 'cpu_ms_per_frame', 'daemon'))} vs {_fmt(_get(p1, 'cpu_ms_per_frame', 'bare_invoke'))} ms",
         "", "", f"`{ALL}`"),
        ("   pipeline efficiency, threads=2", _fmt(r.get("pipeline_efficiency_256_threads2")), "", "", f"`{ALL}`"),
        ("   same, threads=1, with OPC UA, Sparkplug B and Modbus on (`pipeline_efficiency_256_plant`)",
         _fmt(r.get("pipeline_efficiency_256_plant")), ">= 0.90", _met(_get(r, "pipeline_256_plant", "met")),
         "`python -m benchmarks.run --case 10`"),
        ("   same, threads=1, with a shadow model beside the live one (`pipeline_efficiency_256_shadow`); frames "
         "the shadow skipped", f"{_fmt(r.get('pipeline_efficiency_256_shadow'))}; "
         f"{_fmt(_get(r, 'pipeline_256_shadow', 'shadow_skipped'))} of "
         f"{_fmt(_get(r, 'pipeline_256_shadow', 'shadow_compared'))} compared",
         ">= 0.85", _met(_get(r, "pipeline_256_shadow", "met")), "`python -m benchmarks.run --case 11`"),
        ("   daemon / bare invoke fps (medians), threads=2",
         f"{_fmt(p2.get('daemon_fps_median'))} / {_fmt(p2.get('bare_invoke_fps_median'))}", "", "", f"`{ALL}`"),
        ("2. mnist-1 verdicts/s delivered, QoS 1 + outbox (`mnist1_verdicts_per_s`)",
         _fmt(r.get("mnist1_verdicts_per_s")), ">= 1,000", _met(mn.get("met")),
         "`python -m benchmarks.run --case 2`"),
        ("   CPU ms per verdict (all threads)", _fmt(mn.get("cpu_ms_per_verdict")), "", "",
         "`python -m benchmarks.run --case 2`"),
        ("3. Speed-up over Keras eager `model(x)` (`speedup_vs_keras_eager`)", _fmt(r.get("speedup_vs_keras_eager"), "x"),
         ">= 100x", _met(kc.get("met")), "`python -m benchmarks.run --case 3`"),
        ("   Keras eager / predict, ms per frame",
         f"{_fmt(ms.get('keras_eager'))} / {_fmt(ms.get('keras_predict'))}", "", "", "`python -m benchmarks.run --case 3`"),
        ("   ours: Inspector.inspect / without quality gate / bare invoke, ms",
         f"{_fmt(ms.get('ours_inspect'))} / {_fmt(ms.get('ours_inspect_no_quality_gate'))} / "
         f"{_fmt(ms.get('bare_invoke'))}", "", "", "`python -m benchmarks.run --case 3`"),
        ("   speed-up over predict; over eager without quality gate; bare invoke",
         f"{_fmt(kc.get('speedup_vs_keras_predict'), 'x')}; {_fmt(kc.get('speedup_vs_keras_eager_without_quality_gate'), 'x')}; "
         f"{_fmt(kc.get('speedup_vs_keras_eager_bare_invoke'), 'x')}", "", "", "`python -m benchmarks.run --case 3`"),
    ] + realpart.rows(r)


def footprint_rows(r: dict) -> list[tuple[str, str, str, str, str]]:
    fp = r.get("footprint") or {}
    command = "`python -m benchmarks.run --case 4`"
    rows = []
    for label, figures in (fp.get("paced") or {}).items():
        rows.append((f"4. Latency arrival -> PUBACK, {label}, p50 / p99",
                     f"{_fmt(_get(figures, 'latency_ms', 'p50'))} / {_fmt(_get(figures, 'latency_ms', 'p99'))} ms",
                     "", "", command))
        rows.append(("   of which arrival -> outbox / outbox -> PUBACK, p50; p99",
                     f"{_fmt(_get(figures, 'arrival_to_outbox_ms', 'p50'))} / "
                     f"{_fmt(_get(figures, 'outbox_to_puback_ms', 'p50'))}; "
                     f"{_fmt(_get(figures, 'arrival_to_outbox_ms', 'p99'))} / "
                     f"{_fmt(_get(figures, 'outbox_to_puback_ms', 'p99'))} ms", "", "", command))
        rows.append((f"   daemon RSS, {label}, median / peak",
                     f"{_fmt(figures.get('rss_mb_median'))} / {_fmt(figures.get('rss_mb_peak'))} MB", "", "", command))
    p1 = _get(r, "pipeline_256", "by_threads", "1") or {}
    lat = p1.get("latency_ms_at_full_speed") or {}
    rows.append(("   latency at full speed (fps 0), 256x256 threads=1, p50 / p99",
                 f"{_fmt(lat.get('p50'))} / {_fmt(lat.get('p99'))} ms", "", "", f"`{ALL}`"))
    rows.append(("   start to READY=1 (NOTIFY_SOCKET), median", _fmt(fp.get("ready_s_median"), " s"), "", "", command))
    installed = fp.get("installed") or {}
    if installed:
        rows.append(("   installed size, `edge` extra / `train` extra",
                     f"{_fmt(_get(installed, 'edge', 'mb'))} / {_fmt(_get(installed, 'train', 'mb'))} MB "
                     f"({_fmt(installed.get('train_over_edge'), 'x')})", "", "", command))
    return rows


def scaling_table(r: dict) -> str:
    scaling = _get(r, "footprint", "scaling") or {}
    if not scaling:
        return ""
    lines = ["| size, threads | daemon fps | bare invoke fps | efficiency | CPU ms/frame daemon / bare |",
             "|---|---|---|---|---|"]
    for key, v in scaling.items():
        cpu = v.get("cpu_ms_per_frame") or {}
        lines.append(f"| {key} | {_fmt(v.get('daemon_fps'))} | {_fmt(v.get('bare_invoke_fps'))} | "
                     f"{_fmt(v.get('efficiency'))} | {_fmt(cpu.get('daemon'))} / {_fmt(cpu.get('bare_invoke'))} |")
    return "\n".join(lines) + "\n"


def pi_table(r: dict) -> str:
    pi = r.get("pi_estimate") or {}
    if not pi:
        return ""
    lines = ["| device | model only, fps (range) | whole daemon, fps (range) |", "|---|---|---|"]
    for device, label in (("pi4", "Raspberry Pi 4"), ("pi5", "Raspberry Pi 5")):
        e = _get(pi, "estimates", device) or {}
        model, daemon = e.get("model_only_fps") or {}, e.get("daemon_fps_serial") or {}
        lines.append(f"| {label} | {_fmt(model.get('central'))} ({_fmt(model.get('high'))}-{_fmt(model.get('low'))}) | "
                     f"{_fmt(daemon.get('central'))} ({_fmt(daemon.get('high'))}-{_fmt(daemon.get('low'))}) |")
    conversion = pi.get("conversion") or {}
    return ("\n".join(lines) + "\n\n"
            f"Conversion (Pi time / N100 time, one thread): {json.dumps(conversion)}; source: "
            f"{pi.get('conversion_source')}. Core class: {pi.get('core_class')}\n")


def soak_rows() -> list[tuple[str, str, str, str, str]]:
    try:
        soak = json.loads((RESULTS_DIR / "soak.json").read_text())
    except (OSError, ValueError):
        return []
    lat, rss = soak.get("latency_ms_after_warmup") or {}, soak.get("rss") or {}
    return [
        (f"6. Soak: {soak.get('model')} at {_fmt(soak.get('fps_target'))} fps for {_fmt(soak.get('minutes'))} min, "
         "RSS growth after warm-up", _fmt(rss.get("growth_mb"), " MB"), "<= 5 MB", _met(soak.get("rss_growth_ok")),
         "`make soak`"),
        ("   fps achieved; verdicts delivered", f"{_fmt(soak.get('fps_achieved'))}; "
         f"{soak.get('delivered')} of {soak.get('verdicts')}", "", "", "`make soak`"),
        ("   latency arrival -> PUBACK after warm-up, p50 / p99",
         f"{_fmt(lat.get('p50'))} / {_fmt(lat.get('p99'))} ms", "", "", "`make soak`"),
        ("   RSS after warm-up / at end / peak",
         f"{_fmt(rss.get('after_warmup_mb'))} / {_fmt(rss.get('at_end_mb'))} / {_fmt(rss.get('peak_mb'))} MB",
         "", "", "`make soak`"),
    ]


def trigger_rows(r: dict) -> list[tuple[str, str, str, str, str]]:
    trigger = r.get("trigger_latency") or {}
    if not trigger:
        return []
    return [("7. Trigger -> answer, Modbus coil / MQTT cmd/trigger, p50; p99",
             f"{_fmt(_get(trigger, 'modbus_ms', 'p50'))} / {_fmt(_get(trigger, 'mqtt_ms', 'p50'))}; "
             f"{_fmt(_get(trigger, 'modbus_ms', 'p99'))} / {_fmt(_get(trigger, 'mqtt_ms', 'p99'))} ms "
             f"({trigger.get('source')})", "", "", "`python -m benchmarks.run --case 7`")]


def station_page_rows(r: dict) -> list[tuple[str, str, str, str, str]]:
    page = r.get("station_page_256") or {}
    if not page:
        return []
    open_ = page.get("efficiency_page_open")
    met = "met" if open_ is not None and open_ >= page.get("goal", 0.9) else "**not met**"
    return [("8. Pipeline efficiency 256x256 with the station page's live view open / page closed "
             "(`pipeline_efficiency_256_page_open`)", f"{_fmt(open_)} / {_fmt(page.get('efficiency_page_closed'))}",
             f">= {page.get('goal', 0.9)}", met, "`python -m benchmarks.run --case 8`")]


def markdown(results: dict) -> str:
    rows = (headline_rows(results) + footprint_rows(results) + soak_rows() + trigger_rows(results)
            + station_page_rows(results))
    table = ["| figure | value | goal | | command |", "|---|---|---|---|---|"]
    table += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows]
    machine = results.get("machine") or {}
    parts = [
        "# Benchmark results",
        "",
        f"Machine: {machine.get('cpu_model_name')} (family/model {machine.get('cpu_family_model')}), "
        f"{machine.get('cores')} cores, load average {machine.get('load_average_at_start')} at start, "
        f"{machine.get('load_average_at_end')} at end; Python {machine.get('python')}, "
        f"ai-edge-litert {machine.get('ai_edge_litert')}, paho-mqtt {machine.get('paho_mqtt')}.",
        "",
        "\n".join(table),
        "",
    ]
    scaling = scaling_table(results)
    if scaling:
        parts += ["## Scaling with image size and interpreter threads", "", scaling]
    pi = pi_table(results)
    if pi:
        parts += ["## Raspberry Pi estimate (256x256, int8, one interpreter thread)", "", pi]
    measured = results.get("measured_at") or {}
    if measured:
        parts += ["Measured: " + "; ".join(f"{case} {v.get('utc')} ({v.get('mode')}, {v.get('seconds')} s)"
                                          for case, v in sorted(measured.items())), ""]
    return "\n".join(parts)
