"""The model bundle format: a folder with model.json, the model files it lists, and an optional ignore mask.

Reading and writing live here, so the trainer writes exactly what the device reads.

Format 2 names the model kind (which pipeline in edge.kinds turns a frame into an anomaly map) and
its stages: TFLite files run in order, each with its sha256 and an optional float twin. Format 1 bundles (one
model file; the segmenter marked by the residual "map") are read and mapped onto format 2.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge.core.files import read_limited, write_json_atomic
from edge.core.preprocess import ImageError, PreprocessSpec, read_image
from edge.core.quality import QualityLimits
from edge.core.reference import DriftReference
from edge.core.scoring import Calibration, ScoringSpec

FORMAT_NAME = "lineguard-bundle"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST_NAME = "model.json"
MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # a manifest is a few kilobytes; larger is not one, and is not read
MODEL_NAME = "model.tflite"  # the usual file of a single-stage bundle
FLOAT_MODEL_NAME = "model_float.tflite"
IGNORE_MASK_NAME = "ignore.png"
HASH_CHUNK_BYTES = 1 << 20
FORMAT1_MAP_RESIDUAL = "map"  # format 1's mark of a model that outputs its anomaly map: the segmenter


class BundleError(ValueError):
    """A bundle that cannot be used; the message names the file and the problem."""


@dataclass
class Stage:
    """One model file of the bundle, run after the one before it."""

    file: str
    sha256: str = ""
    quantization: str = "int8"
    float_file: str | None = None  # the float twin, for parity checks and `score --use-float`
    float_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Stage:
        stage = cls(
            file=str(data["file"]), sha256=str(data["sha256"]), quantization=str(data.get("quantization", "int8")),
            float_file=data.get("float_file"), float_sha256=data.get("float_sha256"),
        )
        for name in (stage.file, stage.float_file):
            if name is not None and (Path(name).name != name or name in ("", ".", "..")):
                raise ValueError(f"stage file {name!r} must be a plain file name inside the bundle folder")
        return stage


@dataclass
class Bundle:
    """A loaded, verified bundle manifest. The models themselves are opened by edge.core.runtime."""

    path: Path
    name: str
    kind: str  # the pipeline in edge.kinds, e.g. "autoencoder" or "segmenter"
    stages: list[Stage]
    preprocess: PreprocessSpec
    scoring: ScoringSpec
    calibration: Calibration
    metrics: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    architecture: dict[str, Any] = field(default_factory=dict)
    quality: QualityLimits | None = None
    ignore_polygons: list[list[tuple[float, float]]] = field(default_factory=list)
    has_ignore_mask: bool = False
    reference: DriftReference | None = None  # good scores and image figures for the drift watch (edge.drift)

    def ignore_mask(self):
        """The bundle's ignore mask image (non-zero = ignored), covering the whole frame, or None."""
        if not self.has_ignore_mask:
            return None
        try:
            return read_image(self.path / IGNORE_MASK_NAME, "gray")
        except ImageError as exc:
            raise BundleError(f"ignore mask {exc}") from None

    @property
    def model_sha256(self) -> str:
        """What identifies the model in every payload: the only stage's sha256, or for several stages the
        sha256 of their hashes in order, a head file's last (a shared backbone must not make two bundles look alike)."""
        head = self.architecture.get("head") if isinstance(self.architecture, dict) else None
        hashes = [stage.sha256 for stage in self.stages] + ([head["sha256"]] if isinstance(head, dict) else [])
        if len(hashes) == 1:
            return hashes[0]
        return hashlib.sha256("\n".join(map(str, hashes)).encode()).hexdigest()

    def stage_paths(self, use_float: bool = False) -> list[Path]:
        """The model files to run, in order."""
        if use_float and any(stage.float_file is None for stage in self.stages):
            raise BundleError(f"{self.path / MANIFEST_NAME}: the bundle has no float model for every stage")
        return [self.path / (stage.float_file if use_float else stage.file) for stage in self.stages]

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, *self.preprocess.shape)

    def to_manifest(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "kind": self.kind,
            "stages": [stage.to_dict() for stage in self.stages],
            "input": {"shape": list(self.input_shape)},
            "preprocess": self.preprocess.to_dict(),
            "scoring": self.scoring.to_dict(),
            "calibration": self.calibration.to_dict(),
            "quality": self.quality.to_dict() if self.quality else None,
            "ignore": {"polygons": self.ignore_polygons, "mask_file": IGNORE_MASK_NAME if self.has_ignore_mask else None},
            "architecture": self.architecture,
            "reference": self.reference.to_dict() if self.reference else None,
            "metrics": self.metrics,
            "provenance": self.provenance,
        }


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_manifest(manifest_path: Path) -> dict[str, Any]:
    if not manifest_path.parent.is_dir():
        raise BundleError(f"{manifest_path.parent}: no such bundle folder")
    try:
        text = read_limited(manifest_path, MAX_MANIFEST_BYTES).decode("utf-8")
    except FileNotFoundError:
        raise BundleError(f"{manifest_path}: missing; not a model bundle") from None
    except OSError as exc:  # a FIFO, device or folder, or too large: refused before reading it
        raise BundleError(f"{manifest_path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise BundleError(f"{manifest_path}: not valid JSON: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BundleError(f"{manifest_path}: not valid JSON: {exc}") from None
    except RecursionError:
        raise BundleError(f"{manifest_path}: not a {FORMAT_NAME} manifest (nested too deeply)") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise BundleError(f"{manifest_path}: not a {FORMAT_NAME} manifest")
    if data.get("format_version") not in READABLE_VERSIONS:
        raise BundleError(
            f"{manifest_path}: format_version {data.get('format_version')!r} is not supported "
            f"(this lineguard reads versions {', '.join(map(str, READABLE_VERSIONS))})"
        )
    where = _first_non_finite(data)
    if where is not None:
        raise BundleError(f"{manifest_path}: {where[0]} is {where[1]!r}; every number in a bundle must be finite")
    return upgrade_manifest(data) if data["format_version"] == 1 else data


def _first_non_finite(data: Any, where: str = "") -> tuple[str, float] | None:
    """The dotted name and value of the first NaN or infinity (Python's JSON reader takes NaN, Infinity, 1e400)."""
    if isinstance(data, float) and not math.isfinite(data):
        return where or "value", data
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        found = _first_non_finite(value, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


def upgrade_manifest(data: dict[str, Any]) -> dict[str, Any]:
    """A format 1 manifest as format 2: its one model becomes the only stage, its kind follows the residual."""
    upgraded = {key: value for key, value in data.items() if key not in ("model", "float_model")}
    scoring = dict(data.get("scoring") or {})
    is_map = scoring.get("residual") == FORMAT1_MAP_RESIDUAL
    if is_map:
        scoring["residual"] = None
    model, float_model = data.get("model") or {}, data.get("float_model") or {}
    upgraded.update(
        format_version=FORMAT_VERSION,
        kind="segmenter" if is_map else "autoencoder",
        stages=[{
            "file": model.get("file", MODEL_NAME), "sha256": model.get("sha256"),
            "quantization": model.get("quantization", "int8"),
            "float_file": float_model.get("file", FLOAT_MODEL_NAME) if float_model.get("sha256") else None,
            "float_sha256": float_model.get("sha256"),
        }],
        scoring=scoring,
    )
    return upgraded


def _verify_hash(path: Path, expected: str | None, manifest_path: Path) -> None:
    if not path.is_file():
        raise BundleError(f"{path}: missing from the bundle")
    actual = sha256_of(path)
    if actual != expected:
        raise BundleError(
            f"{path}: sha256 {actual[:12]}… does not match {manifest_path.name} ({str(expected)[:12]}…); "
            "the model file is corrupt or from another bundle"
        )


def _bundle_from(root: Path, data: dict[str, Any]) -> Bundle:
    ignore = data.get("ignore") or {}
    stages = [Stage.from_dict(stage) for stage in data["stages"]]
    if not stages:
        raise ValueError("stages is empty")
    return Bundle(
        path=root,
        name=str(data["name"]),
        kind=str(data["kind"]),
        stages=stages,
        preprocess=PreprocessSpec.from_dict(data["preprocess"]),
        scoring=ScoringSpec.from_dict(data["scoring"]),
        calibration=Calibration.from_dict(data["calibration"]),
        metrics=data.get("metrics", {}),
        provenance=data.get("provenance", {}),
        architecture=data.get("architecture", {}),
        quality=QualityLimits.from_dict(data.get("quality")),
        ignore_polygons=[[tuple(p) for p in poly] for poly in ignore.get("polygons", [])],
        has_ignore_mask=bool(ignore.get("mask_file")),
        reference=DriftReference.from_dict(data.get("reference")),
    )


def load_bundle(path: str | Path, verify_float: bool = False) -> Bundle:
    """Read and verify a bundle folder. Raises BundleError with one line naming the file."""
    root = Path(path)
    manifest_path = root / MANIFEST_NAME
    data = _read_manifest(manifest_path)
    try:
        bundle = _bundle_from(root, data)
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{manifest_path}: invalid manifest: {exc.__class__.__name__}: {exc}") from None
    try:
        bundle.scoring.check_size(bundle.preprocess.height, bundle.preprocess.width)
    except ValueError as exc:
        raise BundleError(f"{manifest_path}: {exc}") from None
    declared = tuple(data.get("input", {}).get("shape", ()))
    if declared != bundle.input_shape:
        raise BundleError(
            f"{manifest_path}: input.shape {list(declared)} does not match preprocess {list(bundle.input_shape)}"
        )
    for stage in bundle.stages:
        _verify_hash(root / stage.file, stage.sha256, manifest_path)
        if verify_float and stage.float_file:
            _verify_hash(root / stage.float_file, stage.float_sha256, manifest_path)
    return bundle


def check_model_shapes(bundle: Bundle, input_shape: tuple[int, ...], output_shape: tuple[int, ...],
                       expected_output: tuple[int, ...], model_path: Path,
                       expected_input: tuple[int, ...] | None = None) -> None:
    """The models must take and return exactly the shapes the manifest and its kind promise."""
    expected = tuple(expected_input or bundle.input_shape)
    if tuple(input_shape) != expected or tuple(output_shape) != tuple(expected_output):
        raise BundleError(
            f"{model_path}: model takes {list(input_shape)} and returns {list(output_shape)}, "
            f"but {MANIFEST_NAME} promises {list(expected)} and {list(expected_output)}"
        )


def staging_dir(final: Path) -> Path:
    """A fresh temporary folder beside `final`, on the same filesystem so the last step is a rename."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))


REPORT_MARKERS = ("metrics.json", "scores.csv", "index.html")


class OutputDirError(ValueError):
    """An --out folder that must not be replaced."""


def check_output_dir(out: Path, kind: str, force: bool = False, keep: tuple[Path, ...] = (),
                     sealed: tuple[Path, ...] = ()) -> None:
    """Refuse to replace a folder that is not an earlier output of the same kind (a ``bundle`` or a ``report``).

    Publishing replaces the whole folder, so without this a mistyped --out would delete unrelated files.
    ``keep`` are folders that must survive (the bundle being evaluated, the data), whatever ``force`` says;
    ``sealed`` are kept folders nothing may be written into either (the bundle being evaluated: its own report
    is part of what was shipped). Call it with an absolute ``out``: "." has no name to publish under.
    """
    out_r = out.resolve()
    for kept in (*keep, *sealed):
        kept_r = kept.resolve()
        if out_r == kept_r or out_r in kept_r.parents:
            raise OutputDirError(f"{out}: --out would replace {kept}; choose another folder")
    for folder in sealed:
        if folder.resolve() in out_r.parents:
            raise OutputDirError(f"{out}: --out is inside {folder.resolve()}, which is only read, never written; "
                                 "choose a folder outside it")
    if out.is_symlink():
        raise OutputDirError(f"{out}: is a symbolic link; give the folder it points to, {out.resolve()}")
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"{out}: exists and is not a folder")
    parent = next(p for p in out.parents if p.exists())
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputDirError(f"{out}: cannot create it: {parent} is not writable")
    if not out.exists() or force or not any(out.iterdir()) or _looks_like(out, kind):
        return
    raise OutputDirError(f"{out}: folder exists and is not a lineguard {kind}; its files would be deleted "
                         "(choose another --out, or add --force to replace it)")


def _looks_like(folder: Path, kind: str) -> bool:
    if kind == "bundle":
        return (folder / MANIFEST_NAME).is_file()
    return not (folder / MANIFEST_NAME).exists() and all((folder / name).is_file() for name in REPORT_MARKERS)


def _current_umask() -> int:
    # /proc gives it without changing it; os.umask would set it process-wide for a moment.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _make_readable(folder: Path) -> None:
    """mkdtemp and mkstemp create owner-only entries; a bundle is read by a service account, so apply the umask."""
    umask = _current_umask()
    for path in [folder, *folder.rglob("*")]:
        try:
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
        except OSError:  # file systems without Unix modes (FAT, some network mounts)
            pass


def publish_dir(staged: Path, final: Path) -> None:
    """Replace `final` with `staged` by renames, so readers never see a half-written folder."""
    _make_readable(staged)
    backup = None
    if final.exists():
        backup = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, backup)
    os.replace(staged, final)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def save_manifest(bundle: Bundle) -> None:
    """Hash the model files in the bundle folder and write model.json atomically."""
    for stage in bundle.stages:
        stage.sha256 = sha256_of(bundle.path / stage.file)
        if stage.float_file is not None:
            stage.float_sha256 = sha256_of(bundle.path / stage.float_file)
    write_json_atomic(bundle.path / MANIFEST_NAME, bundle.to_manifest())
