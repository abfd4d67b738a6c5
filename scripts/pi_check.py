#!/usr/bin/env python3
"""`make pi-check`: install and run lineguard on arm64 Debian Bookworm and Trixie under emulation, and compare
every result with the same commands run here (x86).

What it does, each step printed with its time:

1. x86 reference: `lineguard check-config`, `lineguard score` on the bundled samples with models/mnist-1 and
   models/magnetic-tile, and a `lineguard run` replay to a local Mosquitto broker, in this interpreter's venv.
2. For each suite (Bookworm as a Raspberry Pi 4, Trixie as a Raspberry Pi 5):
   - an arm64 root from Debian's archive: `debootstrap --foreign`, then its second stage under emulation
     (cached in .pi-check/, which git ignores; rebuilt when this script's recipe changes or with --rebuild);
   - the README's "Installing on a Raspberry Pi" steps 1, 2, 3 and 5, command for command, inside that root;
   - `lineguard --version`, `check-config`, `score` on both bundles and the replay to the host's broker;
   - every verdict must equal the x86 one and every score must lie within the bundle's tolerance of it.

How the emulation works (no change to the host):
   - qemu-user (Debian's qemu-user-static) runs the arm64 programs. The root's programs start other programs
     (venv runs ensurepip, pip runs the build backend), so the kernel must hand every arm64 ELF to qemu: a
     binfmt_misc entry, registered in a private binfmt_misc instance of a new user namespace (Linux 6.7 and
     later). The host's own binfmt_misc (if any) is not touched, and every mount made here is private to that
     namespace, which ends with the step.
   - QEMU_CPU picks the core the Pi has: cortex-a72 (Raspberry Pi 4) or cortex-a76 (Raspberry Pi 5), so the
     runtime sees that core's instruction set (auxiliary vector HWCAPs) and chooses its kernels for it.
   - /proc/cpuinfo in the root is the Pi's. Without that, LiteRT crashes under Debian 12's qemu 7.2: qemu-user
     passes the host's x86 /proc/cpuinfo through, and the cpuinfo library inside ai-edge-litert (first called
     from an op's Init, FULLY_CONNECTED for mnist-1) dereferences a null pointer in cpuinfo_arm_linux_init when
     it finds no ARM processor there (SIGSEGV at address 0x8). Debian 13's qemu 10.0 makes up an arm64
     /proc/cpuinfo itself and needs no such file; a real Pi has the real one. README, "What was proven on arm64".

Run it as root (debootstrap and the namespace need it); it uses the network only for Debian's archive and PyPI.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
CACHE = REPO / ".pi-check"

# How far an arm64 score may lie from the x86 one, as a fraction of the bundle's threshold; verdicts must be
# identical. Measured (README, "What was proven on arm64"): the int8 models give bit-identical outputs on both
# for the same input, and mnist-1's scores are identical. OpenCV's uint8 bilinear enlargement (cv2.resize,
# INTER_LINEAR) is not bit-exact between its x86 and arm64 builds: on magnetic-tile's 90x210 test crops
# enlarged to 224 px, one pixel in five differs by one grey level, and those differences, through the backbone
# and the PaDiM head, move the score by up to 3.8 % of the threshold. A camera's own noise moves it more.
TOLERANCE_EXACT = 1e-9  # float noise only
TOLERANCE_RESIZED = 0.05

# What Raspberry Pi OS has from the start and the README uses.
BASE_PACKAGES = ["python3", "sudo", "ca-certificates"]
# README "Installing on a Raspberry Pi", step 1, per suite.
SYSTEM_PACKAGES = {"bookworm": ["python3-venv", "v4l-utils"], "trixie": ["python3-venv", "v4l-utils"]}

SUITES = {
    # suite: (the Pi it stands for, QEMU_CPU, /proc/cpuinfo of that Pi: per-core lines, trailer)
    "bookworm": ("Raspberry Pi 4 (Cortex-A72)", "cortex-a72",
                 "BogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\n"
                 "CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n",
                 "Hardware\t: BCM2835\nRevision\t: c03114\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n"),
    "trixie": ("Raspberry Pi 5 (Cortex-A76)", "cortex-a76",
               "BogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp "
               "cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\n"
               "CPU variant\t: 0x4\nCPU part\t: 0xd0b\nCPU revision\t: 1\n",
               "Revision\t: d04170\nModel\t\t: Raspberry Pi 5 Model B Rev 1.0\n"),
}
# Bump to rebuild every cached root.
ROOT_RECIPE = "2 " + " ".join(BASE_PACKAGES)

# The binfmt_misc entry for arm64 ELF executables, as Debian's qemu-user-static registers it; F: qemu is opened
# now, so it also runs inside the chroot.
BINFMT = (r":qemu-aarch64:M::\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:"
          r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:{qemu}:F")

CHECKOUT = "/home/pi/lineguard"  # where the README's commands run: a checkout on the Pi
SCORE_RUNS = {  # name: (bundle, images relative to the checkout, score tolerance)
    "mnist-1": ("models/mnist-1", ["samples/mnist"], TOLERANCE_EXACT),  # 28x28 images: no resize
    "magnetic-tile": ("models/magnetic-tile", [f"tests/fixtures/magnetic-tile/test/{part}"
                                               for part in ("good", "blowhole", "uneven")], TOLERANCE_RESIZED),
}
REPLAY_MODEL = "mnist-1"
REPLAY_IMAGES = "samples/mnist"


class CheckFailed(Exception):
    pass


# --- output ---------------------------------------------------------------------------------------------------

START = time.monotonic()


def say(text: str) -> None:
    print(f"[{time.monotonic() - START:7.1f}s] {text}", flush=True)


class Step:
    """Prints the step, runs it, prints its time; a failure names the step."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self):
        say(f"{self.name} ...")
        self.t0 = time.monotonic()
        return self

    def __exit__(self, kind, exc, tb):
        took = time.monotonic() - self.t0
        if kind is None:
            say(f"{self.name}: ok ({took:.1f} s)")
        else:
            say(f"{self.name}: FAILED after {took:.1f} s: {str(exc).splitlines()[0] if str(exc) else kind.__name__}")
        return False


def run(cmd, *, check=True, capture=False, log: Path | None = None, **kw) -> subprocess.CompletedProcess:
    """A host command. With `log`, its output goes there and its tail is shown on failure."""
    if log is not None:
        with open(log, "wb") as out:
            done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, **kw)
    else:
        done = subprocess.run(cmd, capture_output=capture, **kw)
    if check and done.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:] if log is not None else (
            (done.stdout or b"").decode(errors="replace")[-2000:] + (done.stderr or b"").decode(errors="replace")[-2000:]
            if capture else "")
        raise CheckFailed(f"{' '.join(map(str, cmd))[:300]} exited {done.returncode}\n{tail}")
    return done


# --- the arm64 side --------------------------------------------------------------------------------------------

def qemu_binary() -> str:
    for path in (shutil.which("qemu-aarch64-static"), "/usr/bin/qemu-aarch64-static", "/usr/bin/qemu-aarch64"):
        if path and os.access(path, os.X_OK):
            return path
    raise CheckFailed("qemu-aarch64-static not found: apt-get install qemu-user-static")


def cpu_count_present() -> int:
    """Cores the host kernel lists: the cpuinfo library reads /sys for them and wants each in /proc/cpuinfo."""
    text = Path("/sys/devices/system/cpu/present").read_text().strip()
    last = max(int(part.split("-")[-1]) for part in text.split(","))
    return last + 1


def pi_cpuinfo(suite: str) -> str:
    _, _, per_core, trailer = SUITES[suite]
    return "".join(f"processor\t: {n}\n{per_core}\n" for n in range(cpu_count_present())) + trailer


class Arm:
    """Runs commands inside one suite's arm64 root, in a user namespace with its own binfmt_misc."""

    def __init__(self, suite: str, root: Path, logs: Path) -> None:
        self.suite, self.root, self.logs = suite, root, logs
        self.qemu = qemu_binary()
        self.cpu = SUITES[suite][1]
        self.cpuinfo = root.parent / "cpuinfo"
        self.cpuinfo.write_text(pi_cpuinfo(suite))
        self.pip_cert = False  # pip (its own CA list by default) to use the system's bundle

    def sh(self, script: str, name: str, *, env: dict[str, str] | None = None, check: bool = True,
           cwd: str = "/") -> str:
        """Runs `script` with /bin/sh -e in the root as root; returns its output (also in logs/NAME.log)."""
        resolv = self.root / "etc/resolv.conf"  # the host's name servers, as on any machine on this network
        if resolv.parent.is_dir() and not resolv.is_symlink():
            shutil.copyfile("/etc/resolv.conf", resolv)
        hosts = self.root / "etc/hosts"  # the root shares this machine's host name; sudo looks it up
        host = os.uname().nodename
        if hosts.is_file() and not re.search(rf"\s{re.escape(host)}(\s|$)", hosts.read_text()):
            with open(hosts, "a") as out:
                out.write(f"127.0.1.1\t{host}\n")
        environ = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
                   "LANG": "C.UTF-8", "QEMU_CPU": self.cpu, "DEBIAN_FRONTEND": "noninteractive",
                   "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_ROOT_USER_ACTION": "ignore",
                   **({"PIP_CERT": "/etc/ssl/certs/ca-certificates.crt"} if self.pip_cert else {}), **(env or {})}
        inner = [sys.executable, str(Path(__file__).resolve()), "--in-namespace", str(self.root),
                 str(self.cpuinfo), self.qemu, "--", "/usr/bin/env", "-i",
                 *[f"{k}={v}" for k, v in environ.items()], "/bin/sh", "-ec", f"cd {cwd}\n{script}"]
        log = self.logs / f"{self.suite}-{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(["unshare", "--user", "--mount", "--fork", "--", *inner],
                                    stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT)
            try:
                wait_for_own_user_namespace(proc.pid)
                # Every id maps to itself: root stays root, and apt's _apt and the service account exist.
                for kind in ("uid_map", "gid_map"):
                    Path(f"/proc/{proc.pid}/{kind}").write_text("0 0 4294967295\n")
                proc.stdin.write(b"go\n")
                proc.stdin.close()
            except BaseException:
                proc.kill()
                raise
            code = proc.wait()
        text = log.read_text(errors="replace")
        if check and code != 0:
            raise CheckFailed(f"exit {code} in the {self.suite} root; last lines of {log}:\n"
                              + "\n".join(text.splitlines()[-25:]))
        return text


def wait_for_own_user_namespace(pid: int, timeout_s: float = 10.0) -> None:
    """unshare has made its user namespace (its id maps can be written only then)."""
    ours = os.readlink("/proc/self/ns/user")
    deadline = time.monotonic() + timeout_s
    while os.readlink(f"/proc/{pid}/ns/user") == ours:
        if time.monotonic() > deadline:
            raise CheckFailed("unshare made no user namespace")
        time.sleep(0.01)


def in_namespace(root: str, cpuinfo: str, qemu: str, command: list[str]) -> None:
    """The user namespace's side: wait until the parent mapped the ids, set up, then chroot into the root."""
    sys.stdin.readline()
    binfmt = "/proc/sys/fs/binfmt_misc"
    try:
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", binfmt], check=True)
        Path(binfmt, "register").write_text(BINFMT.format(qemu=qemu))
    except (OSError, subprocess.CalledProcessError) as exc:
        sys.exit(f"cannot register qemu in a binfmt_misc of this user namespace ({exc}): that needs Linux 6.7 "
                 f"or later; this is {os.uname().release}")
    for name in ("dev", "proc", "sys"):
        Path(root, name).mkdir(exist_ok=True)
        subprocess.run(["mount", "--rbind", f"/{name}", f"{root}/{name}"], check=True)
    # The Pi's /proc/cpuinfo over the host's (see the module's docstring).
    subprocess.run(["mount", "--bind", cpuinfo, f"{root}/proc/cpuinfo"], check=True)
    os.execvp("chroot", ["chroot", root, *command])


def build_root(suite: str, root: Path, logs: Path) -> None:
    """debootstrap's first stage here, its second stage under emulation, then the README's step 1."""
    stamp = root.parent / "root.recipe"
    if stamp.exists() and stamp.read_text() == ROOT_RECIPE and (root / "usr/bin/python3").exists():
        say(f"  {suite} root: cached ({root})")
        return
    if root.exists():
        shutil.rmtree(root)
    stamp.unlink(missing_ok=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    run(["debootstrap", "--foreign", "--arch=arm64", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
         suite, str(root), "http://deb.debian.org/debian"], log=logs / f"{suite}-debootstrap-1.log")
    arm = Arm(suite, root, logs)
    # container=lxc: debootstrap then uses the bind-mounted /dev instead of mknod, which a user namespace may not.
    arm.sh("/debootstrap/debootstrap --second-stage", "debootstrap-2", env={"container": "lxc"})
    # The archive's updates and security suites, as on Raspberry Pi OS.
    security = f"{suite}-security"
    (root / "etc/apt/sources.list").write_text(
        f"deb http://deb.debian.org/debian {suite} main\n"
        f"deb http://deb.debian.org/debian {suite}-updates main\n"
        f"deb http://deb.debian.org/debian-security {security} main\n")
    stamp.write_text(ROOT_RECIPE)


LOCAL_CAS = Path("/usr/local/share/ca-certificates")


def carry_local_cas(arm: Arm) -> None:
    """This machine's own CA certificates, if it has any (a network whose TLS proxy signs with its own CA), go
    into the root as an administrator would put them on the Pi; pip then uses the system's bundle."""
    ours = sorted(LOCAL_CAS.glob("**/*.crt")) if LOCAL_CAS.is_dir() else []
    if not ours:
        return
    theirs = arm.root / LOCAL_CAS.relative_to("/")
    changed = False
    for certificate in ours:
        target = theirs / certificate.relative_to(LOCAL_CAS)
        if not target.exists() or target.read_bytes() != certificate.read_bytes():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(certificate, target)
            changed = True
    if changed:
        say(f"  this machine's {len(ours)} local CA certificate(s) added to the root's trust store")
        arm.sh("update-ca-certificates", "local-cas")
    arm.pip_cert = True


def readme_step_1(suite: str, root: Path, arm: Arm) -> None:
    """sudo apt update; sudo apt install ... (cached: again only when the list changes)."""
    packages = " ".join(SYSTEM_PACKAGES[suite])
    stamp = root.parent / "step1.packages"
    if stamp.exists() and stamp.read_text() == packages:
        say(f"  installed earlier: {packages}")
        return
    arm.sh(f"apt-get update -q\napt-get install -y -q {packages}\napt-get clean", "readme-1-apt")
    stamp.write_text(packages)


def copy_checkout(dest: Path) -> None:
    """The working tree's files that git tracks or would track, as a fresh checkout has them."""
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], capture=True,
                 cwd=REPO).stdout.decode().split("\0")
    if dest.exists():
        shutil.rmtree(dest)
    for name in filter(None, listed):
        source = REPO / name
        if not source.is_file():
            continue  # deleted in the working tree
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    for path in [dest, *dest.rglob("*")]:  # readable by the service account, as a clone's files are
        path.chmod(0o755 if path.is_dir() else (0o755 if os.access(path, os.X_OK) else 0o644))


PI5_PAGE = 16384  # Raspberry Pi OS runs the Pi 5 on a kernel with 16 KB pages


def misaligned_for_pages(path: Path, page: int = PI5_PAGE) -> bool:
    """True if glibc's loader would refuse this 64-bit little-endian ELF on a kernel with `page`-byte pages: a
    LOAD segment whose address and file offset differ modulo the page size. Emulation runs with the host's 4 KB
    pages, so this is checked on the files instead."""
    import struct

    data = path.read_bytes()
    if data[:6] != b"\x7fELF\x02\x01":
        return False
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for n in range(phnum):
        kind, _, offset, vaddr = struct.unpack_from("<IIQQ", data, phoff + n * phentsize)
        if kind == 1 and (vaddr - offset) % page:
            return True
    return False


# --- commands run on both sides ----------------------------------------------------------------------------------

def edit_config(text: str, *, device_id: str, model: str, images: str, port: int, web_port: int) -> str:
    """The README's step-5 edits of the repository's config.yaml: model, source, device_id and broker, plus a free
    port for the station page and fps 0 (as fast as frames come) for the replay."""
    edits = [(r"^device_id: \S+", f"device_id: {device_id}"), (r"^model: \S+", f"model: {model}"),
             (r"^(  path: )\S+", rf"\g<1>{images}"), (r"^(  fps: )\d+", r"\g<1>0"),
             (r"^(  port: )1883\b", rf"\g<1>{port}"), (r"^(  port: )8080\b", rf"\g<1>{web_port}")]
    for pattern, replacement in edits:
        text, count = re.subn(pattern, replacement, text, count=1, flags=re.M)
        if count != 1:
            raise CheckFailed(f"config.yaml no longer has a line matching {pattern!r}")
    return text


def parse_scores(text: str) -> dict[str, dict]:
    """`lineguard score` output -> {image path: its JSON}; log lines are skipped."""
    scores = {}
    for line in text.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            scores[record["image"]] = record
    if not scores:
        raise CheckFailed("no scores in the output:\n" + text[-2000:])
    return scores


def replay_verdicts(messages) -> dict[str, dict]:
    verdicts = {}
    for message in messages:
        if message.topic.endswith("/result"):
            record = json.loads(message.payload)
            verdicts[Path(record["image"]).name] = record
    return verdicts


class Broker:
    """The host's Mosquitto on a free 127.0.0.1 port and a subscriber to every station's results."""

    def __init__(self, workdir: Path) -> None:
        from tests.support.broker import MessageCollector, MosquittoBroker

        self.broker = MosquittoBroker(workdir).start()
        self.port = self.broker.port
        self.collector = MessageCollector("127.0.0.1", self.port, ["lineguard/+/result"])

    def verdicts(self, device_id: str, expected: int, timeout_s: float = 30.0) -> dict[str, dict]:
        prefix = f"lineguard/{device_id}/"
        deadline = time.monotonic() + timeout_s
        while True:
            got = replay_verdicts([m for m in self.collector.messages if m.topic.startswith(prefix)])
            if len(got) >= expected or time.monotonic() > deadline:
                return got
            time.sleep(0.1)

    def close(self) -> None:
        self.collector.close()
        self.broker.stop()


def free_port() -> int:
    from tests.support.broker import free_port as pick

    return pick()


def count_images(folder: Path) -> int:
    from edge.core.preprocess import image_files

    return len(image_files(folder))


# --- comparison ----------------------------------------------------------------------------------------------------

def compare(what: str, x86: dict[str, dict], arm: dict[str, dict], tolerance: float) -> tuple[float, list[str]]:
    """Identical verdicts, scores within tolerance × threshold. Returns the largest relative difference and
    the differences found."""
    problems, worst = [], 0.0
    if set(x86) != set(arm):
        problems.append(f"{what}: images differ: only x86 {sorted(set(x86) - set(arm))}, "
                        f"only arm64 {sorted(set(arm) - set(x86))}")
    for image in sorted(set(x86) & set(arm)):
        a, b = x86[image], arm[image]
        if a["verdict"] != b["verdict"]:
            problems.append(f"{what}: {image}: verdict {b['verdict']} on arm64, {a['verdict']} on x86")
        relative = abs(a["score"] - b["score"]) / abs(a["threshold"])
        worst = max(worst, relative)
        if relative > tolerance:
            problems.append(f"{what}: {image}: score {b['score']!r} on arm64, {a['score']!r} on x86 "
                            f"(difference {relative:.2e} of the threshold > {tolerance:g})")
    return worst, problems


# --- the check -------------------------------------------------------------------------------------------------------

def host_prerequisites() -> None:
    if os.geteuid() != 0:
        raise CheckFailed("run as root: debootstrap and the user namespace's binfmt_misc need it")
    need = [package for command, package in (("qemu-aarch64-static", "qemu-user-static"),
                                              ("debootstrap", "debootstrap"), ("mosquitto", "mosquitto"),
                                              ("unshare", "util-linux"))
            if not (shutil.which(command) or os.access(f"/usr/sbin/{command}", os.X_OK))]
    if need:
        say(f"  installing Debian's {' '.join(need)}")
        run(["apt-get", "update", "-qq"])
        run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *need],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    version = run([qemu_binary(), "--version"], capture=True).stdout.decode().splitlines()[0]
    say(f"  {version}; host {os.uname().machine}, Linux {os.uname().release}")


def x86_reference(work: Path, broker: Broker) -> dict:
    lineguard = Path(sys.executable).with_name("lineguard")
    command = [str(lineguard)] if lineguard.exists() else [sys.executable, "-m", "edge.cli"]
    results: dict = {"scores": {}}
    with Step("x86: lineguard --version"):
        say("  " + run([*command, "--version"], capture=True, cwd=REPO).stdout.decode().strip().replace("\n", " | "))
    for name, (bundle, images, _) in SCORE_RUNS.items():
        with Step(f"x86: lineguard score --model {bundle}"):
            out = run([*command, "score", "--model", bundle, *images], capture=True, cwd=REPO).stdout.decode()
            results["scores"][name] = parse_scores(out)
            say(f"  {len(results['scores'][name])} images")
    config = work / "x86-config.yaml"
    config.write_text(edit_config((REPO / "config.yaml").read_text(), device_id="x86", model=str(REPO / "models" / REPLAY_MODEL),
                                  images=str(REPO / REPLAY_IMAGES), port=broker.port, web_port=free_port()))
    with Step("x86: lineguard check-config"):
        run([*command, "check-config", str(config)], capture=True, cwd=REPO)
    with Step("x86: lineguard run (replay to the local broker)"):
        state = work / "x86-state"
        state.mkdir()
        run([*command, "run", "--config", str(config), "--drain-timeout", "20"], cwd=REPO,
            log=work / "x86-run.log", env={**os.environ, "STATE_DIRECTORY": str(state)})
        expected = count_images(REPO / REPLAY_IMAGES)
        results["replay"] = broker.verdicts("x86", expected)
        if len(results["replay"]) != expected:
            raise CheckFailed(f"{len(results['replay'])} verdicts on the broker, {expected} frames replayed")
        say(f"  {expected} verdicts on the broker")
    return results


def check_suite(suite: str, reference: dict, broker: Broker, logs: Path) -> list[str]:
    pi, cpu, _, _ = SUITES[suite]
    root = CACHE / suite / "root"
    say(f"== {suite}: arm64 Debian {suite} as a {pi}, QEMU_CPU={cpu}")
    with Step(f"{suite}: arm64 root (debootstrap, Debian's archive)"):
        build_root(suite, root, logs)
    arm = Arm(suite, root, logs)
    # Emulation only: sudo resets the environment, and qemu takes the core to emulate from QEMU_CPU in it.
    keep = root / "etc/sudoers.d/qemu-cpu"
    keep.write_text('Defaults env_keep += "QEMU_CPU"\n')
    keep.chmod(0o440)
    with Step(f"{suite}: this machine's local CA certificates, if any"):
        carry_local_cas(arm)
    with Step(f"{suite}: README step 1: apt install {' '.join(SYSTEM_PACKAGES[suite])}"):
        readme_step_1(suite, root, arm)
    with Step(f"{suite}: README step 2: service account"):
        arm.sh("id lineguard >/dev/null 2>&1 || useradd --system --user-group --home-dir /var/lib/lineguard "
               "--no-create-home --shell /usr/sbin/nologin lineguard", "readme-2-user")
    with Step(f"{suite}: README step 3: python3 -m venv /opt/lineguard; pip install '.[edge]'"):
        copy_checkout(root / CHECKOUT.lstrip("/"))
        recipe = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()
        venv_stamp = root / "opt/lineguard/.pi-check-pyproject"
        fresh = not (venv_stamp.exists() and venv_stamp.read_text() == recipe)
        arm.sh(("rm -rf /opt/lineguard\npython3 -m venv /opt/lineguard\n" if fresh else "")
               + "/opt/lineguard/bin/pip install -q '.[edge]'\n/opt/lineguard/bin/pip list --format=freeze",
               "readme-3-venv", cwd=CHECKOUT)
        venv_stamp.write_text(recipe)
        say("  " + ("new venv" if fresh else "venv kept (pyproject.toml unchanged); lineguard reinstalled"))
    with Step(f"{suite}: every shared library in the venv loads on a 16 KB-page kernel (Raspberry Pi 5)"):
        libraries = [path for path in (root / "opt/lineguard").rglob("*.so*") if path.is_file()]
        refused = sorted(str(path.relative_to(root)) for path in libraries if misaligned_for_pages(path))
        if refused:
            raise CheckFailed("not loadable with 16 KB pages: " + ", ".join(refused))
        say(f"  {len(libraries)} shared libraries, all with LOAD segments aligned for 16 KB pages")
    with Step(f"{suite}: lineguard --version"):
        out = arm.sh("/opt/lineguard/bin/lineguard --version\nuname -m", "version")
        say("  " + " | ".join(out.strip().splitlines()))
        if "aarch64" not in out or "ai-edge-litert" not in out:
            raise CheckFailed("--version does not name the runtime, or this is not aarch64")
    replay_port = broker.port
    device_id = f"pi-{suite}"
    with Step(f"{suite}: README step 5: config and model under /etc and /var/lib; check-config as lineguard"):
        models = " ".join(f"{CHECKOUT}/{bundle}" for bundle, _, _ in SCORE_RUNS.values())
        arm.sh("install -d -m 0755 /etc/lineguard\n"
               "install -m 0640 -o root -g lineguard config.yaml /etc/lineguard/config.yaml\n"
               "install -d -m 0750 -o lineguard -g lineguard /var/lib/lineguard /var/lib/lineguard/models\n"
               "rm -rf /var/lib/lineguard/models/* /var/lib/lineguard/outbox* /var/lib/lineguard/evidence\n"
               f"cp -r {models} /var/lib/lineguard/models/\n"
               "chown -R lineguard:lineguard /var/lib/lineguard/models", "readme-5-install", cwd=CHECKOUT)
        config = root / "etc/lineguard/config.yaml"  # the README's sudoedit
        config.write_text(edit_config(config.read_text(), device_id=device_id,
                                      model=f"/var/lib/lineguard/models/{REPLAY_MODEL}",
                                      images=f"{CHECKOUT}/{REPLAY_IMAGES}", port=replay_port, web_port=free_port()))
        out = arm.sh("sudo -u lineguard env STATE_DIRECTORY=/var/lib/lineguard "
                     "/opt/lineguard/bin/lineguard check-config /etc/lineguard/config.yaml", "check-config")
        say("  " + out.strip().splitlines()[-1][:200])
    problems: list[str] = []
    for name, (bundle, images, tolerance) in SCORE_RUNS.items():
        with Step(f"{suite}: lineguard score --model {bundle}"):
            out = arm.sh(f"sudo -u lineguard /opt/lineguard/bin/lineguard score "
                         f"--model /var/lib/lineguard/models/{Path(bundle).name} {' '.join(images)}",
                         f"score-{name}", cwd=CHECKOUT)
            scores = {image: record for image, record in parse_scores(out).items()}
            worst, found = compare(f"{suite} score {name}", reference["scores"][name], scores, tolerance)
            problems += found
            say(f"  {len(scores)} images, verdicts {'identical' if not any('verdict' in p for p in found) else 'DIFFER'}"
                f", largest score difference {worst:.2e} of the threshold (tolerance {tolerance:g})")
    with Step(f"{suite}: lineguard run as lineguard (replay to the host's broker at 127.0.0.1:{replay_port})"):
        out = arm.sh("sudo -u lineguard env STATE_DIRECTORY=/var/lib/lineguard /opt/lineguard/bin/lineguard run "
                     "--config /etc/lineguard/config.yaml --drain-timeout 20", "run")
        for line in out.splitlines():
            if "runtime" in line and ("CPU" in line or "cpu" in line):
                say("  " + line.split(" INFO ")[-1][:220])
        expected = count_images(REPO / REPLAY_IMAGES)
        verdicts = broker.verdicts(device_id, expected)
        if len(verdicts) != expected:
            raise CheckFailed(f"{len(verdicts)} verdicts on the broker, {expected} frames replayed")
        worst, found = compare(f"{suite} replay", reference["replay"], verdicts, SCORE_RUNS[REPLAY_MODEL][2])
        problems += found
        say(f"  {len(verdicts)} verdicts on the broker, largest score difference {worst:.2e} of the threshold")
    return problems


def main(argv: list[str]) -> int:
    if argv[:1] == ["--in-namespace"]:
        root, cpuinfo, qemu, separator, *command = argv[1:]
        in_namespace(root, cpuinfo, qemu, command)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suites", default="bookworm,trixie", help="comma-separated (default bookworm,trixie)")
    parser.add_argument("--rebuild", action="store_true", help="build the arm64 roots anew")
    parser.add_argument("--cache", type=Path, default=REPO / ".pi-check",
                        help="folder for the roots and logs (default .pi-check/ in the checkout, which git ignores)")
    args = parser.parse_args(argv)
    global CACHE
    CACHE = args.cache.resolve()
    suites = [s for s in args.suites.split(",") if s]
    unknown = set(suites) - set(SUITES)
    if unknown:
        parser.error(f"unknown suite(s) {sorted(unknown)}; known: {sorted(SUITES)}")
    CACHE.mkdir(exist_ok=True)
    logs = CACHE / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir()
    if args.rebuild:
        for suite in suites:
            (CACHE / suite / "root.recipe").unlink(missing_ok=True)
    problems: list[str] = []
    try:
        with Step("host prerequisites"):
            host_prerequisites()
        with tempfile.TemporaryDirectory(prefix="pi-check-") as tmp:
            work = Path(tmp)
            broker = Broker(work / "broker")
            try:
                reference = x86_reference(work, broker)
                for suite in suites:
                    problems += check_suite(suite, reference, broker, logs)
            finally:
                broker.close()
    except CheckFailed as exc:
        say(f"pi-check FAILED: {exc}")
        say(f"logs: {logs}/")
        return 1
    if problems:
        say("pi-check FAILED: arm64 results differ from x86:")
        for problem in problems:
            print("  " + problem)
        return 1
    say(f"pi-check passed: {', '.join(suites)} on arm64 gave the x86 verdicts and scores within tolerance "
        f"({', '.join(f'{name} {run[2]:g}' for name, run in SCORE_RUNS.items())} of the threshold)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
