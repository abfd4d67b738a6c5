"""The model bundle format: a folder with the int8 model, the float model and model.json.

Reading and writing live here, so the trainer writes exactly what the device reads.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.core.preprocess import PreprocessSpec
from edge.core.quality import QualityLimits
from edge.core.scoring import Calibration, ScoringSpec

FORMAT_NAME = "lineguard-bundle"
FORMAT_VERSION = 1
MANIFEST_NAME = "model.json"
MODEL_NAME = "model.tflite"
FLOAT_MODEL_NAME = "model_float.tflite"
IGNORE_MASK_NAME = "ignore.png"
HASH_CHUNK_BYTES = 1 << 20


class BundleError(ValueError):
    """A bundle that cannot be used; the message names the file and the problem."""


@dataclass
class Bundle:
    """A loaded, verified bundle manifest. The model itself is opened by edge.core.runtime."""

    path: Path
    name: str
    preprocess: PreprocessSpec
    scoring: ScoringSpec
    calibration: Calibration
    model_sha256: str
    quantization: str = "int8"
    float_model_sha256: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    architecture: dict[str, Any] = field(default_factory=dict)
    quality: QualityLimits | None = None
    ignore_polygons: list[list[tuple[float, float]]] = field(default_factory=list)
    has_ignore_mask: bool = False

    def ignore_mask(self):
        """The bundle's ignore mask image (non-zero = ignored), covering the whole frame, or None."""
        if not self.has_ignore_mask:
            return None
        import cv2

        mask = cv2.imread(str(self.path / IGNORE_MASK_NAME), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise BundleError(f"{self.path / IGNORE_MASK_NAME}: missing or unreadable ignore mask")
        return mask

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_NAME

    @property
    def float_model_path(self) -> Path:
        return self.path / FLOAT_MODEL_NAME

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, *self.preprocess.shape)

    def to_manifest(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "model": {"file": MODEL_NAME, "sha256": self.model_sha256, "quantization": self.quantization},
            "float_model": {"file": FLOAT_MODEL_NAME, "sha256": self.float_model_sha256},
            "input": {"shape": list(self.input_shape)},
            "preprocess": self.preprocess.to_dict(),
            "scoring": self.scoring.to_dict(),
            "calibration": self.calibration.to_dict(),
            "quality": self.quality.to_dict() if self.quality else None,
            "ignore": {"polygons": self.ignore_polygons, "mask_file": IGNORE_MASK_NAME if self.has_ignore_mask else None},
            "architecture": self.architecture,
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
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{manifest_path}: missing; not a model bundle") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{manifest_path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise BundleError(f"{manifest_path}: not a {FORMAT_NAME} manifest")
    if data.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{manifest_path}: format_version {data.get('format_version')!r} is not supported "
            f"(this lineguard reads version {FORMAT_VERSION})"
        )
    return data


def _verify_hash(path: Path, expected: str | None, manifest_path: Path) -> None:
    if not path.is_file():
        raise BundleError(f"{path}: missing from the bundle")
    actual = sha256_of(path)
    if actual != expected:
        raise BundleError(
            f"{path}: sha256 {actual[:12]}… does not match {manifest_path.name} ({str(expected)[:12]}…); "
            "the model file is corrupt or from another bundle"
        )


def load_bundle(path: str | Path, verify_float: bool = False) -> Bundle:
    """Read and verify a bundle folder. Raises BundleError with one line naming the file."""
    root = Path(path)
    manifest_path = root / MANIFEST_NAME
    data = _read_manifest(manifest_path)
    try:
        bundle = Bundle(
            path=root,
            name=str(data["name"]),
            preprocess=PreprocessSpec.from_dict(data["preprocess"]),
            scoring=ScoringSpec.from_dict(data["scoring"]),
            calibration=Calibration.from_dict(data["calibration"]),
            model_sha256=str(data["model"]["sha256"]),
            quantization=str(data["model"].get("quantization", "int8")),
            float_model_sha256=(data.get("float_model") or {}).get("sha256"),
            metrics=data.get("metrics", {}),
            provenance=data.get("provenance", {}),
            architecture=data.get("architecture", {}),
            quality=QualityLimits.from_dict(data.get("quality")),
            ignore_polygons=[[tuple(p) for p in poly] for poly in (data.get("ignore") or {}).get("polygons", [])],
            has_ignore_mask=bool((data.get("ignore") or {}).get("mask_file")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{manifest_path}: invalid manifest: {exc.__class__.__name__}: {exc}") from None
    declared = tuple(data.get("input", {}).get("shape", ()))
    if declared != bundle.input_shape:
        raise BundleError(
            f"{manifest_path}: input.shape {list(declared)} does not match preprocess {list(bundle.input_shape)}"
        )
    _verify_hash(bundle.model_path, bundle.model_sha256, manifest_path)
    if verify_float and bundle.float_model_sha256:
        _verify_hash(bundle.float_model_path, bundle.float_model_sha256, manifest_path)
    return bundle


def check_model_shapes(bundle: Bundle, input_shape: tuple[int, ...], output_shape: tuple[int, ...], model_path: Path) -> None:
    """The model must take and return exactly the shape the manifest promises.

    An autoencoder returns an image like its input; a model that outputs its anomaly map returns one channel.
    """
    expected = bundle.input_shape
    expected_output = (*expected[:3], 1) if bundle.scoring.residual == "map" else expected
    if tuple(input_shape) != expected or tuple(output_shape) != expected_output:
        raise BundleError(
            f"{model_path}: model takes {list(input_shape)} and returns {list(output_shape)}, "
            f"but {MANIFEST_NAME} promises {list(expected)} and {list(expected_output)}"
        )


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary name beside the target, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=2, sort_keys=False)
            out.write("\n")
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def staging_dir(final: Path) -> Path:
    """A fresh temporary folder beside `final`, on the same filesystem so the last step is a rename."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))


REPORT_MARKERS = ("metrics.json", "scores.csv", "index.html")


class OutputDirError(ValueError):
    """An --out folder that must not be replaced."""


def check_output_dir(out: Path, kind: str, force: bool = False, keep: tuple[Path, ...] = ()) -> None:
    """Refuse to replace a folder that is not an earlier output of the same kind (a ``bundle`` or a ``report``).

    Publishing replaces the whole folder, so without this a mistyped --out would delete unrelated files.
    ``keep`` are folders that must survive (the bundle being evaluated, the data), whatever ``force`` says.
    Call it with an absolute ``out``: "." has no name to publish under.
    """
    for kept in keep:
        out_r, kept_r = out.resolve(), kept.resolve()
        if out_r == kept_r or out_r in kept_r.parents:
            raise OutputDirError(f"{out}: --out would replace {kept}; choose another folder")
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
    bundle.model_sha256 = sha256_of(bundle.model_path)
    if bundle.float_model_path.is_file():
        bundle.float_model_sha256 = sha256_of(bundle.float_model_path)
    write_json_atomic(bundle.path / MANIFEST_NAME, bundle.to_manifest())
