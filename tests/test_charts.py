"""The charts of classification figures: each draws its data, and the confusion matrix is drawn by one
function wherever it is shown (the HTML report and training's TensorBoard log)."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from fbml.modeling.charts import confusion_chart, f1_chart, reliability_chart
from fbml.modeling.features import FeatureDataset
from fbml.modeling.metrics import calibration_bins, confusion_matrix, per_class_scores
from fbml.modeling.training import TrainConfig, TrainData, fit, predict
from fbml.workflows.report import write_report
from PIL import Image

from report_examples import CLASSES, example_results


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def test_charts_grow_with_the_classes_and_differ_with_the_data() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 100)
    good = np.where(rng.random(100) < 0.9, labels, (labels + 1) % 5)
    bad = np.where(rng.random(100) < 0.3, labels, (labels + 1) % 5)
    names = list(CLASSES)
    small = confusion_chart(confusion_matrix(labels % 2, good % 2, 2), names[:2])
    large = confusion_chart(confusion_matrix(labels, good, 5), names)
    assert large.height > small.height and large.width > small.width
    assert not np.array_equal(_pixels(large), _pixels(confusion_chart(confusion_matrix(labels, bad, 5), names)))
    f1_good, f1_bad = f1_chart(names, per_class_scores(labels, good, 5)), f1_chart(names, per_class_scores(labels, bad, 5))
    assert f1_good.size == f1_bad.size and not np.array_equal(_pixels(f1_good), _pixels(f1_bad))
    calibrated = reliability_chart(calibration_bins(labels, np.eye(5)[good]))
    assert calibrated.mode == "RGB" and calibrated.width > 300


def test_the_report_and_the_training_log_draw_the_same_confusion_chart(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    import torch
    from fbml.modeling.models import ModelOutput
    from tensorboard.backend.event_processing import event_accumulator
    from torch import nn

    class Linear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(4, 3)

        def forward(self, features: torch.Tensor) -> ModelOutput:
            return ModelOutput(self.layer(features), features)

    rng = np.random.default_rng(0)

    def data(count: int) -> FeatureDataset:
        labels = rng.integers(0, 3, count)
        features = (np.eye(3, 4)[labels] * 2 + rng.normal(0, 1, (count, 4))).astype(np.float32)
        return FeatureDataset(features, labels, np.arange(count))

    torch.manual_seed(0)
    model, names = Linear(), ["alpha", "beta", "gamma"]
    training = TrainData(data(48), data(30))
    fit(model, training, TrainConfig(epochs=2, batch_size=16), logdir=tmp_path / "runs", class_names=names, progress=False)
    validation = predict(model, training.validation)
    matrix = confusion_matrix(validation.labels, validation.probabilities.argmax(axis=1), 3)
    expected = _pixels(confusion_chart(matrix, names))
    accumulator = event_accumulator.EventAccumulator(str(tmp_path / "runs"), size_guidance={event_accumulator.IMAGES: 0})
    accumulator.Reload()
    (logged,) = accumulator.Images("confusion_matrix/validation")
    np.testing.assert_array_equal(_pixels(Image.open(BytesIO(logged.encoded_image_string))), expected)

    results = example_results("text", 40, [None], seed=2)
    write_report(tmp_path / "report", [results], title="t", mistakes=0)
    matrix = confusion_matrix(results.labels, results.probabilities.argmax(axis=1), len(CLASSES))
    with Image.open(tmp_path / "report" / "1-text-confusion.png") as drawn:
        np.testing.assert_array_equal(_pixels(drawn), _pixels(confusion_chart(matrix, CLASSES)))
