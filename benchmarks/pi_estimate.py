"""Case 5, a Raspberry Pi estimate from the x86 figures of this run.

Conversion (time on the Pi / time on an Intel N100, one thread, TFLite with XNNPACK, EfficientDet-Lite0, the
published figures quoted in the benchmark issue): Pi 4 3.6 (int8) and 4.3 (fp32); Pi 5 0.8 (int8) and 1.35
(fp32). The int8 factor converts the model's invoke time; the fp32 factor stands in for the rest of the
daemon's per-frame work (decode, numpy, Python), which is scalar or float code.

The cores here are not N100 cores, so a second factor, CORE_VS_N100, converts this machine's per-core speed
to an N100's; see core_class() for why 1.5 is used, with 1.0 and 2.0 as the range.
"""
from __future__ import annotations

from benchmarks.common import log, machine, rounded

PI_OVER_N100 = {  # time ratios, one thread
    "pi4": {"int8": 3.6, "fp32": 4.3},
    "pi5": {"int8": 0.8, "fp32": 1.35},
}
CONVERSION_SOURCE = ("published TFLite XNNPACK single-thread EfficientDet-Lite0 latencies, Raspberry Pi 4 and 5 "
                     "against an Intel N100 (as quoted in the benchmark issue)")
CORE_VS_N100 = {"low": 1.0, "central": 1.5, "high": 2.0}  # how much faster one core here is than an N100 core


def core_class(cpu: dict) -> str:
    """The honest comparison of a core here with an N100 core, from /proc/cpuinfo."""
    name, family = cpu.get("cpu_model_name", "?"), cpu.get("cpu_family_model")
    zen4 = family == "25/17" or "9004" in name or "Genoa" in name
    if not zen4:
        return (f"{name} (family/model {family}): not a CPU this estimate was reasoned for; the central factor "
                "assumes a recent server core somewhat faster per core than an N100's Gracemont E-core")
    return (f"{name}, family/model {family}: AMD Zen 4 (EPYC 9004 'Genoa') vCPUs under KVM, "
            f"{cpu.get('cpu_mhz_nominal')} MHz nominal, AVX-512 with VNNI. The N100 has four Gracemont E-cores "
            "(up to 3.4 GHz, AVX2 and AVX-VNNI at 256 bits, no AVX-512). A Zen 4 core does more per clock than a "
            "Gracemont core (roughly 1.4-1.6x in single-thread scores) and XNNPACK runs its AVX-512 VNNI int8 "
            "kernels here (seen in the profile), so a core here is faster than an N100 core: the N100 factors "
            "alone (CORE_VS_N100 = 1.0) would flatter the Pi. The estimate uses 1.5, with 1.0-2.0 as its range; "
            "shared, noisy vCPUs pull the other way, which is why the range starts at 1.0")


def fps(invoke_ms: float, other_ms: float, device: str, core: float) -> float:
    factors = PI_OVER_N100[device]
    return 1000.0 / ((invoke_ms * factors["int8"] + other_ms * factors["fp32"]) * core)


def run(results: dict) -> dict:
    log("case 5: Raspberry Pi estimate")
    pipeline = (results.get("pipeline_256") or {}).get("by_threads", {}).get("1")
    if not pipeline:
        raise RuntimeError("case 5 needs case 1's figures (threads=1) in latest.json; run case 1 first")
    cpu = pipeline["cpu_ms_per_frame"]
    invoke_ms = cpu["bare_invoke"]  # CPU time per invoke: the model's own work, least disturbed by waiting
    other_ms = max(0.0, cpu["daemon"] - cpu["bare_invoke"])  # everything else the daemon does per frame
    estimates = {}
    for device in PI_OVER_N100:
        estimates[device] = {
            "model_only_fps": {k: rounded(fps(invoke_ms, 0.0, device, c), 1) for k, c in CORE_VS_N100.items()},
            "daemon_fps_serial": {k: rounded(fps(invoke_ms, other_ms, device, c), 1) for k, c in CORE_VS_N100.items()},
        }
    log("  Pi 4 about %.1f fps, Pi 5 about %.1f fps (256x256 int8, one thread, whole daemon)",
        estimates["pi4"]["daemon_fps_serial"]["central"], estimates["pi5"]["daemon_fps_serial"]["central"])
    return {"pi_estimate": {
        "size": "256x256 gray, int8, 1 interpreter thread",
        "x86_invoke_cpu_ms": invoke_ms, "x86_other_cpu_ms_per_frame": rounded(other_ms),
        "conversion": PI_OVER_N100, "conversion_source": CONVERSION_SOURCE,
        "core_vs_n100": CORE_VS_N100, "core_class": core_class(results.get("machine") or machine()),
        "estimates": estimates,
        "note": ("daemon_fps_serial charges all of the daemon's other per-frame work to the inference core; on a "
                 "Pi's 4 cores the replay decode runs beside the model, so the real figure lies between "
                 "daemon_fps_serial and model_only_fps"),
    }}
