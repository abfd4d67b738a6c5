"""From good images to a calibrated int8 bundle: train, quantize, calibrate on the int8 model, report."""
from __future__ import annotations

import datetime as dt
import logging
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

import cv2

from edge.argtypes import MIN_SIDE_PX
from edge.kinds.base import LARGE_FRAME_SIDE
from edge.core.bundle import IGNORE_MASK_NAME, Bundle, publish_dir, save_manifest, staging_dir
from edge.core.files import write_json_atomic
from edge.core.inspector import Inspector
from edge.core.preprocess import PreprocessSpec
from edge.core.quality import fit_limits, measure
from edge.core.reference import DriftReference, Distribution, image_reference
from edge.core.scoring import Calibration, ScoringSpec, edge_band_problem
from trainer import calibration as good_calibration
from trainer import crossfit, metrics, small_choice
from trainer.data import DataError, Dataset, Sample, load_arrays, read_checked
from trainer.evaluate import ScoredSet, score_samples, summarize
from trainer.models import MODELS, module_for

logger = logging.getLogger(__name__)

TRAINER_VERSION = "0.1.0"
DENSE_MAX_SIDE = 32  # MNIST-sized images get the study's dense model
SMALL_DEFAULT_MODEL = "dense"  # `--model auto` without a measured choice: the study's model for small gray images
DEFAULT_MODEL = "features"  # and for the rest (magnetic tile, README: ImageNet features beat every from-scratch model)
PIXEL_THRESHOLD_QUANTILE = 0.999  # of good-image anomaly-map pixels: what counts as an anomalous pixel
# When good images leave (almost) no residual the quantile is 0, which a bundle may not carry (every pixel would
# count as anomalous): then any residual above the smallest normal float32 counts.
PIXEL_THRESHOLD_FLOOR = float(np.finfo(np.float32).tiny)
MIN_CROSS_FIT = 10  # good images below which a kind that refits still calibrates on a held-out share


@dataclass
class TrainOptions:
    """Everything `lineguard train` can be told; None means "choose from the data"."""

    name: str | None = None
    model: str = "auto"  # auto or a choice in edge.kinds.MODELS: dense | conv | segmenter | features
    size: tuple[int, int] | None = None  # (height, width); None: native when small, else 128x128
    color: str | None = None  # None: from the data
    roi: tuple[int, int, int, int] | None = None
    loss: str = "mse"
    residual: str | None = None  # None: l1 for autoencoders (the study's); the segmenter outputs its map
    reducer: str | None = None  # None: sum for autoencoders (the study's), max for the segmenter
    smoothing_sigma: float | None = None  # None: 4 px for features (PaDiM's), else 0
    topk_fraction: float = 0.01
    width: int | None = None
    latent: int | None = None
    head: str = "auto"  # features: a head in edge.kinds.features.heads.HEADS, or auto (measured on held-out images)
    crop: int | None = None  # segmenter: train on random square crops of this size, infer on the whole frame
    steps: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    ignore_mask: Path | None = None  # image covering the whole frame; non-zero pixels are not scored
    ignore_polygons: list[list[tuple[float, float]]] = field(default_factory=list)  # frame pixel coordinates
    edge_band: int = 0  # model-input pixels at each side left out of the map and the score (scoring.edge_band)
    threshold_method: str = "auto"  # auto | best-f1 | good-quantile
    target_frr: float = 0.01
    min_catch: float = 0.9  # share of test defects a fit model catches at its threshold (trainer.fitness)
    val_fraction: float = 0.1
    augment: list[str] = field(default_factory=list)
    seed: int = 0
    threads: int = 2

    def scoring_spec(self) -> ScoringSpec:
        """How the station will score this model's maps (resolved options): what the bundle ships."""
        return ScoringSpec(self.residual, self.reducer, self.smoothing_sigma, self.topk_fraction, self.edge_band)

    def resolved(self, dataset: Dataset) -> TrainOptions:
        """Fill every "auto" from the data, so the bundle records what was really used."""
        check_image_sizes(dataset)
        out = TrainOptions(**asdict(self))
        out.color = self.color or dataset.color
        if out.model == "auto":
            # Measured on magnetic tile (README): ImageNet features beat every from-scratch model by far.
            # train_bundle measures the choice for small images (trainer.small_choice); this is the fallback.
            small = max(max(size) for size in dataset.sizes) <= DENSE_MAX_SIDE and out.color == "gray"
            out.model = SMALL_DEFAULT_MODEL if small else DEFAULT_MODEL
        if out.model not in MODELS:
            raise ValueError(f"model must be auto or one of {sorted(MODELS)}, got {out.model!r}")
        out.size = self.size or default_size(dataset, out.model)
        choice = MODELS[out.model]
        if choice.residual is None and out.residual is not None:
            raise ValueError(f"the {out.model} outputs its anomaly map: --residual does not apply to it")
        out.residual = out.residual or choice.residual
        out.reducer = out.reducer or choice.reducer
        for key, value in choice.defaults.items():
            if getattr(out, key, None) is None:
                setattr(out, key, value)
        if out.smoothing_sigma is None:
            out.smoothing_sigma = 0.0
        _check_edge_band(out)
        if out.threshold_method == "auto":
            # The study's protocol when anomaly classes were named; good parts only otherwise.
            out.threshold_method = "best-f1" if dataset.anomaly_classes_named else "good-quantile"
        return out


def _check_edge_band(opts: TrainOptions) -> None:
    problem = edge_band_problem(opts.edge_band, *opts.size)
    if problem:
        raise ValueError(f"--edge-band {problem}")


def check_image_sizes(dataset: Dataset) -> None:
    """Images with a side under MIN_SIDE_PX hold nothing a model can learn from, resized or not: refuse them
    before any training time is spent (a 1x1 image once made a bundle with a threshold of 1e-12)."""
    small = sorted(size for size in dataset.sizes if min(size) < MIN_SIDE_PX)
    if small:
        height, width = small[0]
        raise DataError(f"{dataset.description}: images of {width}x{height} pixels are too small; the models "
                        f"need at least {MIN_SIDE_PX}x{MIN_SIDE_PX}")


def default_size(dataset: Dataset, model: str) -> tuple[int, int]:
    """The model input when --size is not given. Every image is resized to it, as the device resizes frames."""
    largest = max(max(size) for size in dataset.sizes)
    choice = MODELS[model]
    if choice.small_upscale > 1 and small_choice.is_small(dataset):
        return small_choice.enlarged_size(dataset, choice.small_upscale)  # the model sees small images enlarged
    if len(dataset.sizes) == 1 and largest <= DENSE_MAX_SIDE:
        return next(iter(dataset.sizes))
    side = choice.default_side
    if choice.large_side and min(min(size) for size in dataset.sizes) >= LARGE_FRAME_SIDE:
        side = choice.large_side  # small defects on a large frame vanish at the native input
        logger.info("%s: every image is at least %d px a side: the model input is %dx%d (--size to choose)",
                    dataset.description, LARGE_FRAME_SIDE, side, side)
    if len(dataset.sizes) > 1:
        listed = ", ".join(f"{w}x{h}" for h, w in sorted(dataset.sizes)[:4])
        logger.info("%s: images of %d sizes (%s, ...): every image is resized to %dx%d, as the device resizes "
                    "frames (--size to choose)", dataset.description, len(dataset.sizes), listed, side, side)
    return (side, side)


def split_validation(train: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    if fraction <= 0:
        return train, []
    order = np.random.default_rng(seed).permutation(len(train))
    n_val = max(1, int(round(len(train) * fraction)))
    if n_val >= len(train):
        raise DataError(f"only {len(train)} training images: too few to hold out {fraction:.0%} for calibration")
    return [train[i] for i in order[n_val:]], [train[i] for i in order[:n_val]]


def choose_threshold(options: TrainOptions, calib: ScoredSet) -> tuple[float, str, dict]:
    """The threshold, its method, and what can be said about it (trainer.calibration; empty for best-F1)."""
    if options.threshold_method == "best-f1":
        if not np.any(calib.labels == 1):
            raise DataError("best-f1 calibration needs labelled anomalous images in the test set")
        return metrics.best_f1_threshold(calib.scores, calib.labels)[0], "best_f1", {}
    good = calib.good_scores()
    choice = good_calibration.choose_threshold(good, options.target_frr)
    names = [s.name for s, label in zip(calib.samples, calib.labels) if label == 0] if calib.samples else []
    facts = {key: value for key, value in choice.to_dict().items() if key not in ("note", "unusual", "n_good")}
    facts["unusual_goods"] = [{"image": names[i] if names else str(i), "score": float(good[i])} for i in choice.unusual]
    facts["calibration_note"] = choice.note
    return choice.threshold, "good_quantile", facts


def calibrate(options: TrainOptions, calib: ScoredSet, good_heats: list[np.ndarray],
              out_of_fold: bool = False) -> Calibration:
    """Threshold from the int8 model's own scores, plus the statistics that normalize the score."""
    good = calib.good_scores()
    threshold, method, facts = choose_threshold(options, calib)
    score_min = float(good.min())
    score_max = float(calib.scores.max()) if np.any(calib.labels == 1) else threshold + (threshold - score_min)
    pixels = np.concatenate([h.ravel() for h in good_heats])
    stats = {
        "good_mean": float(good.mean()), "good_std": float(good.std()),
        "good_p50": float(np.percentile(good, 50)), "good_p99": float(np.percentile(good, 99)),
        "n_good": int(good.size), "n_anomalous": int(np.sum(calib.labels == 1)),
        "target_frr": options.target_frr if method == "good_quantile" else None,
    }
    if method == "good_quantile":
        stats.update(_target_reach(good.size, options.target_frr, out_of_fold))
        stats.update(facts, scored_out_of_fold=out_of_fold)
        if facts["unusual_goods"]:
            logger.warning("good images that score like defects (check them: glare, wrong part, mislabelled?): %s",
                           ", ".join(f"{u['image']} {u['score']:.4g}" for u in facts["unusual_goods"]))
        # the band's threshold is the inner maps' maximum: only where the image score is the map's maximum
        edge = good_calibration.edge_peaks(good_heats, good, options.target_frr, threshold) \
            if options.reducer == "max" else None
        if edge is not None:
            stats["edge_peaks"] = edge
            logger.warning("%s", edge["note"])
    return Calibration(
        threshold=float(threshold), method=method, score_min=score_min, score_max=max(score_max, threshold + 1e-9),
        pixel_threshold=max(float(np.quantile(pixels, PIXEL_THRESHOLD_QUANTILE)), PIXEL_THRESHOLD_FLOOR), stats=stats,
    )


def _target_reach(n_good: int, target_frr: float, out_of_fold: bool) -> dict:
    """Too few good images cannot hold the target rate; say so rather than quietly loosening it."""
    reach = metrics.good_quantile_reach(n_good, target_frr)
    if not reach["target_frr_reachable"]:
        more = "add good images" if out_of_fold else "hold out more good images (--val-fraction) or add some"
        logger.warning("%s; %s", reach["note"], more)
    return reach


def train_bundle(dataset: Dataset, out_dir: Path, options: TrainOptions) -> dict:
    """The whole job. Writes into a temporary folder and renames it to out_dir only when everything worked."""
    fit_samples, val_samples = split_validation(dataset.train, options.val_fraction, options.seed)
    model_choice = None
    if options.model == "auto" and small_choice.is_small(dataset):
        check_image_sizes(dataset)
        options, model_choice = small_choice.choose(options, dataset, fit_samples)
    opts = options.resolved(dataset)
    spec = PreprocessSpec(color=opts.color, height=opts.size[0], width=opts.size[1], roi=opts.roi)
    scoring = opts.scoring_spec()
    choice = MODELS[opts.model]
    kind_module = module_for(choice)
    cross_fit = (opts.threshold_method == "good-quantile" and crossfit.supported(kind_module)
                 and len(dataset.train) >= MIN_CROSS_FIT)
    if cross_fit:  # every good image is fitted on and, out of fold, calibrates: none is held out
        fit_samples, val_samples = dataset.train, []
    logger.info("training a %s model (kind %s) on %d images (%s), %d held out", opts.model, choice.kind,
                len(fit_samples), "x".join(map(str, spec.shape)), len(val_samples))
    x_train = load_arrays(fit_samples, spec)
    model = kind_module.fit(opts, x_train)

    staged = staging_dir(out_dir)
    try:
        bundle = Bundle(
            path=staged, name=opts.name or out_dir.name, kind=choice.kind,
            stages=kind_module.export(model, x_train, staged, opts.seed), preprocess=spec, scoring=scoring,
            calibration=Calibration(threshold=1.0), architecture=kind_module.architecture(opts, model),
        )
        if model_choice is not None:
            bundle.architecture["model_choice"] = model_choice
        measurements = [measure(x) for x in x_train]
        bundle.quality = fit_limits(measurements)
        bundle.reference = DriftReference(image=image_reference(measurements, "training images"))
        _add_ignore(bundle, opts, staged, dataset)
        save_manifest(bundle)
        refit = (lambda: crossfit.out_of_fold(bundle, kind_module, model, opts, fit_samples)) if cross_fit else None
        result = _calibrate_and_report(bundle, dataset, opts, fit_samples, val_samples, refit)
        publish_dir(staged, out_dir)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return result


def _add_ignore(bundle: Bundle, opts: TrainOptions, staged: Path, dataset: Dataset) -> None:
    """Ship the ignore mask and polygons in the bundle, so the device leaves out the same pixels."""
    if opts.ignore_polygons and len(dataset.sizes) > 1:
        raise DataError("--ignore-polygons are in frame pixels: they need images of one size")
    bundle.ignore_polygons = [[tuple(map(float, p)) for p in poly] for poly in opts.ignore_polygons]
    if opts.ignore_mask is not None:
        mask = read_checked(opts.ignore_mask, "gray", "ignore mask")  # as the device will read it back
        cv2.imwrite(str(staged / IGNORE_MASK_NAME), mask)
        bundle.has_ignore_mask = True


def _choices(architecture: dict) -> dict:
    """What was chosen by measurement and why, for the report."""
    head = architecture.get("head") or {}
    found = {"model_choice": (architecture.get("model_choice") or {}).get("reason"),
             "head_choice": (head.get("choice") or {}).get("reason")}
    return {key: reason for key, reason in found.items() if reason}


CALIBRATION_FACTS = ("n_good", "scored_out_of_fold", "target_frr", "expected_frr", "frr_interval", "threshold_interval",
                     "reachable", "add_good", "unusual_goods", "calibration_note", "edge_peaks")


def _calibration_facts(stats: dict) -> dict:
    """What metrics.json says about how the threshold was set."""
    return {key: stats[key] for key in CALIBRATION_FACTS if key in (stats or {})}


def _unusual_samples(bundle: Bundle, samples: list[Sample]) -> list[tuple[Sample, float]]:
    """The training goods the calibration found unusual, for the report's thumbnails."""
    by_name = {s.name: s for s in samples}
    unusual = (bundle.calibration.stats or {}).get("unusual_goods") or []
    return [(by_name[u["image"]], u["score"]) for u in unusual if u["image"] in by_name]


def _calibration_set(opts: TrainOptions, dataset: Dataset, fit: list[Sample], val: list[Sample]) -> list[Sample]:
    if opts.threshold_method == "best-f1":
        return dataset.test  # the study's protocol: the threshold with the best F1 on labelled data
    return val or fit


def _calibration_scores(bundle: Bundle, dataset: Dataset, opts: TrainOptions, fit, val,
                        refit) -> tuple[ScoredSet, ScoredSet]:
    """(int8, float) scores to calibrate on: out of fold when the kind refits, else held-out (or labelled) images."""
    if refit is not None:
        return refit()
    samples = _calibration_set(opts, dataset, fit, val)
    int8 = Inspector(bundle, threads=opts.threads)
    float_model = Inspector(bundle, threads=opts.threads, use_float_model=True)
    return (score_samples(int8, samples, bundle.preprocess.color, "calibrating (int8)"),
            score_samples(float_model, samples, bundle.preprocess.color, "calibrating (float)", keep_heats=False))


def _score_source(opts: TrainOptions, out_of_fold: bool) -> str:
    """Which good scores the drift reference summarizes: the ones the threshold was calibrated on."""
    if out_of_fold:
        return "good images scored out of fold"
    return "labelled test set's good images" if opts.threshold_method == "best-f1" else "held-out good images"


def _calibrate_and_report(bundle: Bundle, dataset: Dataset, opts: TrainOptions, fit, val, refit=None) -> dict:
    color = bundle.preprocess.color
    calib, calib_float = _calibration_scores(bundle, dataset, opts, fit, val, refit)
    good_heats = [h for h, label in zip(calib.heats, calib.labels) if label == 0]
    bundle.calibration = calibrate(opts, calib, good_heats, out_of_fold=refit is not None)
    bundle.reference = replace(bundle.reference or DriftReference(),
                               scores=Distribution.of(calib.good_scores(), _score_source(opts, refit is not None)))
    float_threshold, _, _ = choose_threshold(opts, calib_float)
    float_model = Inspector(bundle, threads=opts.threads, use_float_model=True)
    int8 = Inspector(bundle, threads=opts.threads)
    result: dict = {"calibration_method": bundle.calibration.method}
    if dataset.test:
        scored = score_samples(int8, dataset.test, color, "evaluating (int8)")
        scored_float = score_samples(float_model, dataset.test, color, "evaluating (float)")
        result = summarize(bundle, scored, scored_float, float_threshold, opts.min_catch)
        result.update(_choices(bundle.architecture))
        result["calibration"] = _calibration_facts(bundle.calibration.stats)
        report_dir = bundle.path / "report"
        report_dir.mkdir()
        from trainer.report import write_report

        write_report(report_dir, bundle, int8, scored, result, unusual=_unusual_samples(bundle, fit))
        write_json_atomic(report_dir / "metrics.json", result)
    result.setdefault("calibration", _calibration_facts(bundle.calibration.stats))
    bundle.metrics = result
    bundle.provenance = {
        "data": dataset.description, "data_fingerprint": dataset.fingerprint(),
        "train_images": len(fit), "held_out_images": len(val), "trainer_version": TRAINER_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items() if k != "threads"},
    }
    save_manifest(bundle)
    return result
