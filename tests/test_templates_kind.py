"""Registration works: a model kind and a feature head, defined here and registered at run time, are fitted by the
trainer, written into a bundle, loaded back and scored, with no edit anywhere else."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from edge import kinds
from edge.core.bundle import load_bundle
from edge.core.inspector import Inspector
from edge.kinds import ModelChoice, Pipeline, PipelineOutput
from edge.kinds.features.heads import HEADS, HeadError, HeadFit, register_head, require
from tests.support.helpers import FIXTURES

PARTS = FIXTURES / "parts"
SIZE = (32, 32)


# ---------------------------------------------------------------- a toy model kind: device side


class ToyPipeline(Pipeline):
    """A per-pixel linear autoencoder; the map is the largest channel residual from its reconstruction."""

    kind = "toy-max-residual"
    choices = (ModelChoice("toy", None, "max", {"width": 0, "latent": 0, "batch_size": 8, "steps": 30,
                                                "learning_rate": 1e-2, "crop": 0}),)
    fit_module = __name__  # this test module is the kind's fit module too

    def output_shape(self) -> tuple[int, ...]:
        return self.bundle.input_shape

    def __call__(self, x: np.ndarray, pixels: np.ndarray) -> PipelineOutput:
        reconstruction = self.chain.run(x, pixels)
        return PipelineOutput(np.abs(x - reconstruction).max(axis=-1), reconstruction)


# ---------------------------------------------------------------- the toy kind's fit side (what fit.py holds)


def fit(options, x_train: np.ndarray):
    from tensorflow import keras

    from trainer.kinds.keras_fit import adam, fit_steps

    keras.utils.set_random_seed(options.seed)
    inputs = keras.Input(shape=x_train.shape[1:])
    model = keras.Model(inputs, keras.layers.Conv2D(x_train.shape[-1], 1, activation="sigmoid")(inputs))
    model.compile(optimizer=adam(options), loss="mse")
    rng = np.random.default_rng(options.seed)

    def batches():
        while True:
            batch = x_train[rng.integers(len(x_train), size=options.batch_size)]
            yield batch, batch

    fit_steps(model, batches(), options.steps)
    return model


def export(model, x_train: np.ndarray, folder: Path, seed: int):
    from trainer.kinds.keras_fit import export_single_stage

    return export_single_stage(model, x_train, folder, seed)


def architecture(options, model) -> dict:
    return {"kind": options.model, "parameters": int(model.count_params())}


# ---------------------------------------------------------------- a toy feature head


@dataclass
class MeanDistanceHead:
    """Every patch's distance from the good images' mean feature vector."""

    type: ClassVar[str] = "toy-mean-distance"

    channels: np.ndarray
    mean: np.ndarray  # (C,) float32

    @staticmethod
    def fit(features: np.ndarray, setting: HeadFit) -> tuple[dict[str, np.ndarray], dict]:
        mean = features.reshape(-1, features.shape[-1]).mean(axis=0)
        return ({"channels": np.arange(features.shape[-1], dtype=np.int32), "mean": mean.astype(np.float32)},
                {"images": int(features.shape[0])})

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], path: Path) -> MeanDistanceHead:
        channels, mean = require(arrays, path, "channels", "mean")
        if mean.shape != (channels.size,):
            raise HeadError(f"{path}: mean {mean.shape} does not fit {channels.size} channels")
        return cls(channels, mean.astype(np.float32))

    def check_grid(self, grid: tuple[int, int], path: Path) -> None:
        """One vector for every position: any grid."""

    def distances(self, features: np.ndarray) -> np.ndarray:
        return np.linalg.norm(features - self.mean, axis=1).astype(np.float32)


# ---------------------------------------------------------------- registered at run time, then run end to end


@pytest.fixture
def toy_kind():
    kinds.register(ToyPipeline)
    yield ToyPipeline
    kinds.unregister(ToyPipeline)


@pytest.fixture
def toy_head():
    register_head(MeanDistanceHead)
    yield MeanDistanceHead
    HEADS.pop(MeanDistanceHead.type)


def _train(out: Path, **options) -> dict:
    from trainer.data import load_dataset
    from trainer.train import TrainOptions, train_bundle

    return train_bundle(load_dataset(PARTS), out, TrainOptions(size=SIZE, threads=1, **options))


def _scores(bundle_path: Path) -> tuple[np.ndarray, np.ndarray]:
    inspector = Inspector(load_bundle(bundle_path))
    good = sorted((PARTS / "test" / "good").glob("*.png"))
    bad = sorted((PARTS / "test" / "scratch").glob("*.png"))
    return (np.array([inspector.inspect_file(p).score for p in good]),
            np.array([inspector.inspect_file(p).score for p in bad]))


def test_a_kind_registered_at_run_time_is_a_model_choice_trained_and_scored(toy_kind, tmp_path):
    assert kinds.MODELS["toy"].kind == ToyPipeline.kind
    out = tmp_path / "toy"
    result = _train(out, model="toy")
    bundle = load_bundle(out)
    assert bundle.kind == ToyPipeline.kind and bundle.architecture["kind"] == "toy"
    assert isinstance(Inspector(bundle).pipeline, ToyPipeline)
    good, bad = _scores(out)
    assert np.all(np.isfinite(good)) and np.all(np.isfinite(bad))
    assert "image_auroc" in result or result.get("calibration_method")


def test_an_unregistered_kind_is_no_choice_and_its_bundle_does_not_open(toy_kind, tmp_path):
    out = tmp_path / "toy"
    _train(out, model="toy")
    kinds.unregister(ToyPipeline)
    assert "toy" not in kinds.MODELS
    from edge.core.bundle import BundleError

    with pytest.raises(BundleError, match="not known to this lineguard"):
        Inspector(load_bundle(out))
    kinds.register(ToyPipeline)


def test_a_head_registered_at_run_time_is_fitted_written_loaded_and_scored(toy_head, tmp_path):
    out = tmp_path / "features-toy-head"
    _train(out, model="features", head=MeanDistanceHead.type)
    bundle = load_bundle(out)
    assert bundle.architecture["head"]["type"] == MeanDistanceHead.type
    inspector = Inspector(bundle)
    assert isinstance(inspector.pipeline.head, MeanDistanceHead)
    good, bad = _scores(out)
    assert bad.mean() > good.mean()  # the scratches are farther from the good parts' mean features


def test_the_registry_checks_a_fitted_head_as_it_checks_a_loaded_one(toy_head):
    from edge.kinds.features.heads import fit_head, head_from_arrays

    features = np.random.default_rng(0).normal(size=(4, 9, 6)).astype(np.float32)
    arrays, _, head = fit_head(MeanDistanceHead.type, features, HeadFit(grid=(3, 3)))
    assert isinstance(head, MeanDistanceHead)
    for broken in ({**arrays, "mean": np.full(6, np.nan, np.float32)}, {**arrays, "mean": arrays["mean"][:3]},
                   {**arrays, "channels": np.arange(7, dtype=np.int32)}):
        with pytest.raises(HeadError):
            head_from_arrays(MeanDistanceHead.type, broken, Path("head.npz"), feature_channels=6)
