import json
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from rulebert.core.config import TrainConfig
from rulebert.model import report
from rulebert.model.model_dir import CALIBRATION_FILE, load_calibrator
from rulebert.model.report import HTML_FILE, PREDICTIONS_FILE, write_html_report, write_model_report


class ImageSources(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])


def image_sources(path) -> list[str]:
    parser = ImageSources()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser.sources


def synthetic(n: int = 120, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    scores = np.clip(0.4 * labels + rng.uniform(0, 0.6, n), 0, 1)
    rules = np.array(["No spam <script>alert(1)</script>", "No legal advice"], dtype=object)[np.arange(n) % 2]
    epochs = [
        {"epoch": 1.0, "loss": 0.6, "f1": 0.7, "col_auc": 0.8},
        {"epoch": 2.0, "loss": 0.5, "col_auc": 0.9},
    ]
    return labels, scores, rules, epochs


def test_report_has_every_picture_it_references(tmp_path):
    labels, scores, rules, epochs = synthetic()
    path = write_html_report(
        tmp_path, "test", labels, scores, rules, calibrated=scores**2, epochs=epochs, threshold=0.4
    )
    assert path == tmp_path / HTML_FILE
    sources = image_sources(path)
    assert len(sources) == 5  # ROC, histogram, reliability, confusion, epochs
    for source in sources:
        assert (tmp_path / source).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = path.read_text(encoding="utf-8")
    assert "<script>" not in page and "&lt;script&gt;" in page  # rule text is escaped
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp dir left


def test_header_numbers_match_the_data(tmp_path):
    from rulebert.domain.metrics import column_averaged_auc

    labels, scores, rules, _ = synthetic(seed=1)
    page = write_html_report(tmp_path, "t", labels, scores, rules, threshold=0.5).read_text(encoding="utf-8")
    assert f"{column_averaged_auc(labels, scores, rules)[0]:.4f}" in page
    assert f">{len(labels)}<" in page


def test_a_failing_plot_leaves_no_report(tmp_path, monkeypatch):
    labels, scores, rules, epochs = synthetic()

    def broken(*args, **kwargs):
        raise RuntimeError("plot failed")

    monkeypatch.setattr(report, "plot_reliability", broken)
    with pytest.raises(RuntimeError, match="plot failed"):
        write_html_report(tmp_path, "test", labels, scores, rules, epochs=epochs)
    assert list(tmp_path.iterdir()) == []


def test_a_failing_plot_keeps_the_previous_report(tmp_path, monkeypatch):
    labels, scores, rules, _ = synthetic()
    write_html_report(tmp_path, "first", labels, scores, rules)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    monkeypatch.setattr(report, "plot_confusion", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        write_html_report(tmp_path, "second", 1 - labels, scores, rules)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_no_validation_rows_gives_a_page_without_plots(tmp_path):
    path = write_html_report(tmp_path, "empty", [], [], [], epochs=None)
    assert image_sources(path) == [] and "No validation rows" in path.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def trained(tiny_checkpoint, tmp_path_factory):
    from rulebert.training.train import train_model

    from .conftest import make_frame

    folder = tmp_path_factory.mktemp("report-train")
    make_frame(48, seed=1).to_csv(folder / "train.csv", index=False)
    config = TrainConfig(
        model=str(tiny_checkpoint), epochs=2, lr=1e-3, batch_size=16, max_length=48, val_fraction=0.25
    )
    result = train_model(config, folder / "train.csv", folder / "model", progress=False)
    return folder / "model", result


def test_training_writes_calibration_threshold_and_report(trained):
    from rulebert.domain.metrics import column_averaged_auc
    from rulebert.inference.predict import Scorer

    model_dir, result = trained
    metrics = json.loads((model_dir / "metrics.json").read_text())
    calibration = metrics["calibration"]
    assert calibration["fitted"] and (model_dir / CALIBRATION_FILE).is_file()
    assert 0 < metrics["threshold"] < 1 and metrics["threshold"] == result.metrics["threshold"]
    assert {"brier_before", "brier_after", "ece_before", "ece_after"} <= set(calibration)
    for source in image_sources(model_dir / HTML_FILE):
        assert (model_dir / source).is_file()

    rows = pd.read_csv(model_dir / PREDICTIONS_FILE, dtype={"rule": str})
    assert list(rows.columns) == ["rule", "label", "score", "calibrated"]
    assert len(rows) == metrics["validation_rows"]
    # the saved raw scores are the kept model's: they reproduce the best epoch's col AUC
    assert column_averaged_auc(rows["label"], rows["score"], rows["rule"])[0] == pytest.approx(
        metrics["validation"]["col_auc"], abs=1e-6
    )
    # the Scorer answers calibrated probabilities, same ranking as raw
    scorer = Scorer(model_dir)
    assert scorer.threshold == metrics["threshold"]
    bodies, rules = ["buy cheap now http", "the weather is nice"], list(rows["rule"][:1]) * 2
    calibrated = scorer.score(bodies, rules)
    scorer.calibrator = None
    raw = scorer.score(bodies, rules)
    assert np.allclose(calibrated, load_calibrator(model_dir).transform(raw))
    assert np.array_equal(np.argsort(calibrated), np.argsort(raw))


def test_model_report_elsewhere(trained, tmp_path):
    """What ``rulebert run`` does: OUT/report.html from the model dir's validation predictions."""
    model_dir, _ = trained
    path = write_model_report(model_dir, tmp_path)
    assert path == tmp_path / HTML_FILE and len(image_sources(path)) == 5
    assert all((tmp_path / s).is_file() for s in image_sources(path))
