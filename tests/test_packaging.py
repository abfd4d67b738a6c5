"""pyproject.toml: each extra resolves to packages that exist on the platforms the project names, and the
licence metadata is the SPDX form setuptools asks for."""
from __future__ import annotations

import re
import tomllib

import pytest
from packaging.requirements import Requirement

from tests.support.helpers import ROOT

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
PLATFORMS = {  # marker environments: where the trainer and the device run
    "linux-x86_64": {"sys_platform": "linux", "platform_machine": "x86_64"},
    "windows": {"sys_platform": "win32", "platform_machine": "AMD64"},
    "macos-intel": {"sys_platform": "darwin", "platform_machine": "x86_64"},
    "macos-apple-silicon": {"sys_platform": "darwin", "platform_machine": "arm64"},
    "raspberry-pi-64": {"sys_platform": "linux", "platform_machine": "aarch64"},
}
NO_TENSORFLOW_CPU_WHEELS = {"macos-apple-silicon", "raspberry-pi-64"}
PI_PIN_LIBRARY_PLATFORMS = {"raspberry-pi-64"}


def picked(extra: str, platform: str) -> set[str]:
    environment = {**PLATFORMS[platform], "extra": extra}
    return {requirement.name for line in PROJECT["optional-dependencies"][extra]
            if not (requirement := Requirement(line)).marker or requirement.marker.evaluate(environment)}


@pytest.mark.parametrize("platform", PLATFORMS)
def test_train_gets_exactly_one_tensorflow_that_has_wheels_there(platform):
    tensorflows = {name for name in picked("train", platform) if name.startswith("tensorflow")}
    assert tensorflows == ({"tensorflow"} if platform in NO_TENSORFLOW_CPU_WHEELS else {"tensorflow-cpu"})


@pytest.mark.parametrize("platform", PLATFORMS)
def test_edge_has_gpio_and_modbus_everywhere_and_lgpio_only_on_arm_linux(platform):
    packages = picked("edge", platform)
    assert {"gpiozero", "pymodbus"} <= packages
    assert ("lgpio" in packages) == (platform in PI_PIN_LIBRARY_PLATFORMS)
    assert not any(name.startswith("tensorflow") for name in packages)  # the device never needs TensorFlow


@pytest.mark.parametrize("python, has_wheel", [("3.11", True), ("3.12", True), ("3.13", False)])
def test_lgpio_is_asked_of_pip_only_where_pypi_has_its_wheel(python, has_wheel):
    """Trixie's Python 3.13 has no lgpio wheel, and building one needs liblgpio, which only Raspberry Pi OS has."""
    environment = {**PLATFORMS["raspberry-pi-64"], "extra": "edge", "python_version": python}
    packages = {requirement.name for line in PROJECT["optional-dependencies"]["edge"]
                if not (requirement := Requirement(line)).marker or requirement.marker.evaluate(environment)}
    assert ("lgpio" in packages) == has_wheel and "gpiozero" in packages


def test_licence_is_an_spdx_expression_with_its_file():
    assert PROJECT["license"] == "Apache-2.0"
    assert all((ROOT / name).is_file() for name in PROJECT["license-files"])
    build = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["build-system"]["requires"]
    [setuptools] = [Requirement(line) for line in build if line.startswith("setuptools")]
    assert setuptools.specifier.contains("77") and not setuptools.specifier.contains("76.9")


def test_version_names_lineguard_its_runtime_and_python(capsys):
    import platform

    from edge.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("lineguard ") and len(lines) == 3
    assert re.fullmatch(r"runtime: ai-edge-litert \d+\.\d+\S*", lines[1])
    assert lines[2] == f"python: {platform.python_version()} ({platform.machine()}, {platform.system()})"


def test_cpu_features_name_the_machine_and_only_known_extensions():
    import platform

    from edge.core.runtime import ARM64_HWCAP, ARM64_HWCAP2, X86_FLAGS, cpu_features

    machine, _, names = cpu_features().partition(": ")
    assert machine == platform.machine().lower()
    known = {*X86_FLAGS, *ARM64_HWCAP.values(), *ARM64_HWCAP2.values()}
    assert names == "none of the SIMD extensions it knows" or set(names.split()) <= known
