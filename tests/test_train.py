import json

import numpy as np
import pandas as pd
import pytest

from rulebert.core.config import TrainConfig
from rulebert.core.errors import RulebertError
from rulebert.inference.predict import Scorer
from rulebert.model.model_dir import METRICS_FILE, RECORD_FILE, read_record
from rulebert.training.train import CHECKPOINT_DIR, train_model


def tiny_config(tiny_checkpoint, **overrides):
    values = dict(
        model=str(tiny_checkpoint), epochs=2, lr=1e-3, batch_size=16, max_length=48, val_fraction=0.2
    )
    return TrainConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def trained(tiny_checkpoint, tmp_path_factory):
    from .conftest import make_frame

    folder = tmp_path_factory.mktemp("train")
    make_frame(48, seed=1).to_csv(folder / "train.csv", index=False)
    make_frame(10, seed=2, labelled=False).to_csv(folder / "test.csv", index=False)
    config = tiny_config(tiny_checkpoint, keep="best")
    result = train_model(config, folder / "train.csv", folder / "model", folder / "test.csv", progress=False)
    return folder, config, result


def test_training_writes_a_complete_model_dir(trained):
    folder, config, result = trained
    out = folder / "model"
    assert {"config.json", "model.safetensors", "tokenizer.json", RECORD_FILE, METRICS_FILE} <= {
        p.name for p in out.iterdir()
    }
    assert not (out / CHECKPOINT_DIR).exists()  # checkpoints are removed once the model is saved
    record = read_record(out)
    assert record["config"] == config.to_dict()
    assert record["data"]["test"]["sha256"] and record["data"]["dedupe"]["rows_in"] == 48 * 5 + 10 * 4


def test_metrics_per_epoch_and_best_epoch_kept(trained):
    folder, _, result = trained
    metrics = json.loads((folder / "model" / METRICS_FILE).read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1.0, 2.0]
    for entry in metrics["epochs"]:
        assert {"accuracy", "f1", "roc_auc", "col_auc", "loss"} <= set(entry)
    best = max(metrics["epochs"], key=lambda e: e["col_auc"])
    assert metrics["validation"] == best
    assert metrics["train_rows"] + metrics["validation_rows"] == read_record(folder / "model")["data"]["rows"]


def test_the_saved_model_is_the_best_epoch(trained, tiny_checkpoint):
    """Scoring the validation split again reproduces the best epoch's col AUC: the best model was kept."""
    from rulebert.domain import data as D
    from rulebert.domain.metrics import classification_metrics
    from rulebert.training.train import prepare_rows

    folder, config, result = trained
    rows, _ = prepare_rows(config, folder / "train.csv", folder / "test.csv")
    _, val = D.grouped_split(rows, config.val_fraction, config.seed)
    scores = Scorer(folder / "model", backend="torch").score(  # the saved weights, not their int8 copy
        val[D.TEXT].tolist(), val[D.RULE].tolist(), val[D.SUBREDDIT].tolist()
    )
    again = classification_metrics(val[D.LABEL], scores, val[D.RULE])
    assert again["col_auc"] == pytest.approx(result.metrics["validation"]["col_auc"], abs=1e-6)


def test_learns_the_synthetic_task(trained):
    _, _, result = trained
    assert result.metrics["validation"]["col_auc"] > 0.75  # words decide the label; chance is 0.5


def test_same_seed_same_predictions(trained, tiny_checkpoint, tmp_path):
    folder, config, _ = trained
    train_model(config, folder / "train.csv", tmp_path / "again", folder / "test.csv", progress=False)
    test = pd.read_csv(folder / "test.csv")
    args = (test["body"].tolist(), test["rule"].tolist())
    assert np.array_equal(Scorer(folder / "model").score(*args), Scorer(tmp_path / "again").score(*args))


def test_refuses_to_overwrite_a_different_model(trained, tiny_checkpoint):
    folder, config, _ = trained
    other = tiny_config(tiny_checkpoint, seed=7)
    with pytest.raises(RulebertError, match="already holds a different model"):
        train_model(other, folder / "train.csv", folder / "model", folder / "test.csv", progress=False)


def test_no_validation_split(tiny_checkpoint, data_dir, tmp_path):
    config = tiny_config(tiny_checkpoint, val_fraction=0.0, epochs=1)
    result = train_model(config, data_dir / "train.csv", tmp_path / "m", progress=False)
    assert result.metrics["validation"] is None and result.metrics["validation_rows"] == 0
    assert read_record(tmp_path / "m")["data"]["test"] is None


def test_template_input_format_trains(tiny_checkpoint, data_dir, tmp_path):
    config = tiny_config(tiny_checkpoint, input_format="template", epochs=1)
    result = train_model(config, data_dir / "train.csv", tmp_path / "m", progress=False)
    assert result.metrics["validation"]["col_auc"] >= 0.0
    assert Scorer(tmp_path / "m").config.input_format == "template"


def test_keep_last_epoch(tiny_checkpoint, data_dir, tmp_path):
    """The default keeps the last epoch: its metrics are reported and its weights are the ones saved."""
    from rulebert.domain import data as D
    from rulebert.domain.metrics import classification_metrics
    from rulebert.training.train import prepare_rows

    config = tiny_config(tiny_checkpoint, epochs=3)
    assert config.keep == "last"
    result = train_model(config, data_dir / "train.csv", tmp_path / "m", progress=False)
    assert [e["epoch"] for e in result.metrics["epochs"]] == [1.0, 2.0, 3.0]
    assert result.metrics["validation"] == result.metrics["epochs"][-1]
    rows, _ = prepare_rows(config, data_dir / "train.csv", None)
    _, val = D.grouped_split(rows, config.val_fraction, config.seed)
    scorer = Scorer(tmp_path / "m")
    scorer.calibrator = None  # raw scores: the epoch metrics were measured before calibration
    scores = scorer.score(val[D.TEXT].tolist(), val[D.RULE].tolist(), val[D.SUBREDDIT].tolist())
    again = classification_metrics(val[D.LABEL], scores, val[D.RULE])
    assert again["roc_auc"] == pytest.approx(result.metrics["epochs"][-1]["roc_auc"], abs=1e-6)


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    from rulebert.backend.device import cpu_has_native_bf16

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_vnni\n")
    assert not cpu_has_native_bf16(str(cpuinfo))
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16\n")
    assert cpu_has_native_bf16(str(cpuinfo))
    assert not cpu_has_native_bf16(str(tmp_path / "missing"))


def test_bf16_on_needs_hardware_for_it(monkeypatch):
    from rulebert.backend import device

    monkeypatch.setattr(device, "bf16_device", lambda: None)
    assert not device.training_bf16("auto")
    with pytest.raises(RulebertError, match="bf16"):
        device.training_bf16("on")
    monkeypatch.setattr(device, "bf16_device", lambda: "cpu")
    assert device.training_bf16("auto") and not device.training_bf16("off")


def test_bf16_training_on_a_cpu_reports_what_the_saved_model_scores(
    tiny_checkpoint, data_dir, tmp_path, monkeypatch
):
    """bf16 autocast on a CPU trains; validation then runs in fp32, as a CPU Scorer does, so the saved
    metrics (down to the loss) are what the saved model reproduces."""
    import torch

    from rulebert.backend import device
    from rulebert.domain import data as D
    from rulebert.training.train import prepare_rows

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda *a: True)  # emulated where the CPU lacks it
    config = tiny_config(tiny_checkpoint, epochs=1)
    result = train_model(config, data_dir / "train.csv", tmp_path / "m", progress=False)
    assert result.metrics["device"] == "cpu" and result.metrics["bf16"]
    rows, _ = prepare_rows(config, data_dir / "train.csv", None)
    _, val = D.grouped_split(rows, config.val_fraction, config.seed)
    scorer = Scorer(tmp_path / "m")
    scorer.calibrator = None
    p = np.clip(scorer.score(val[D.TEXT].tolist(), val[D.RULE].tolist(), val[D.SUBREDDIT].tolist()), 1e-7, 1)
    labels = val[D.LABEL].to_numpy()
    loss = -np.mean(labels * np.log(p) + (1 - labels) * np.log(np.clip(1 - p, 1e-7, 1)))
    assert result.metrics["epochs"][-1]["loss"] == pytest.approx(loss, abs=1e-5)


# --- fast by default: the int8 ONNX file is written and checked by training ----------------------------


def test_training_checks_the_int8_file_against_torch(trained):
    """The file is kept exactly when the AUC drop is within the tolerance or not shown to exceed it."""
    folder, _config, result = trained
    out = folder / "model"
    check = json.loads((out / METRICS_FILE).read_text())["onnx_int8"]
    assert check == result.metrics["onnx_int8"]
    assert check["rows"] == result.metrics["validation_rows"] > 0
    ranked = (check["spearman"] or 0) >= 0.99
    drop = check["col_auc_torch"] - check["col_auc_int8"] if "col_auc_int8" in check else None
    close = ranked and (drop <= check["tolerance"] or check["drop_95_lower"] <= check["tolerance"])
    assert check["written"] is close is (out / "model.int8.onnx").is_file()
    assert close or "rank correlation" in check["reason"] or "tolerance" in check["reason"]
    assert Scorer(out).backend == ("onnx-int8" if close else "torch")


def test_training_writes_an_int8_file_that_scoring_uses(tiny_checkpoint, data_dir, tmp_path, monkeypatch):
    import rulebert.backend.export

    monkeypatch.setattr(rulebert.backend.export, "INT8_AUC_TOLERANCE", 1.0)  # the tiny model passes any check
    monkeypatch.setattr(rulebert.backend.export, "MIN_SPEARMAN", -1.0)
    result = train_model(
        tiny_config(tiny_checkpoint, epochs=1), data_dir / "train.csv", tmp_path / "m", progress=False
    )
    assert result.metrics["onnx_int8"]["written"] is True and (tmp_path / "m" / "model.int8.onnx").is_file()
    scorer = Scorer(tmp_path / "m")  # auto, on a CPU: the int8 file
    assert scorer.backend == "onnx-int8"
    texts, rules = ["buy cheap now", "nice movie"], ["No advertising"] * 2
    torch = Scorer(tmp_path / "m", backend="torch")
    torch.calibrator = scorer.calibrator = None  # raw scores: the tiny model's Platt slope is in the 1000s
    np.testing.assert_allclose(scorer.score(texts, rules), torch.score(texts, rules), atol=0.01)


def test_no_export_writes_no_int8_file(tiny_checkpoint, data_dir, tmp_path):
    config = tiny_config(tiny_checkpoint, epochs=1)
    result = train_model(config, data_dir / "train.csv", tmp_path / "m", progress=False, export_int8=False)
    assert not (tmp_path / "m" / "model.int8.onnx").exists() and "onnx_int8" not in result.metrics
    assert Scorer(tmp_path / "m").backend == "torch"


def test_an_int8_file_that_ranks_differently_is_not_kept(trained, tmp_path, monkeypatch):
    import shutil

    import rulebert.backend.export
    from rulebert.model.model_dir import read_onnx_record

    folder, _config, _result = trained
    model = shutil.copytree(folder / "model", tmp_path / "model")
    monkeypatch.setattr(rulebert.backend.export, "INT8_AUC_TOLERANCE", -1.0)  # no int8 file can be this good
    monkeypatch.setattr(rulebert.backend.export, "MIN_SPEARMAN", -1.0)
    scorer = Scorer(model, backend="torch")
    texts = ["buy cheap now", "nice movie", "click for a discount", "my family dog"]
    features = scorer.encode(texts, ["No advertising"] * 4)
    check = rulebert.backend.export.export_int8_checked(
        model, features, scorer.score(texts, ["No advertising"] * 4), [1, 0, 1, 0], ["r"] * 4
    )
    assert check["written"] is False and "beyond the tolerance -1.0" in check["reason"]
    assert not (model / "model.int8.onnx").exists() and "model.int8.onnx" not in read_onnx_record(model)
    assert Scorer(model).backend == "torch"


def test_an_int8_file_that_fails_is_retried_with_the_feed_forward_in_fp32(trained, tmp_path, monkeypatch):
    """The second rung of INT8_LADDER: a wider model's all-int8 copy may rank worse, the mixed one is kept."""
    import shutil

    import onnx

    import rulebert.backend.export as export
    from rulebert.model.model_dir import read_onnx_record

    folder, _config, _result = trained
    model = shutil.copytree(folder / "model", tmp_path / "model")
    real = export._int8_check
    calls = []

    def first_fails(path, *args):
        calls.append(read_onnx_record(model)[path.name]["quantization"])
        kept, why, check = real(path, *args)
        return (False, "made to fail", check) if len(calls) == 1 else (kept, why, check)

    monkeypatch.setattr(export, "_int8_check", first_fails)
    monkeypatch.setattr(export, "INT8_AUC_TOLERANCE", 1.0)
    monkeypatch.setattr(export, "MIN_SPEARMAN", -1.0)
    scorer = Scorer(model, backend="torch")
    texts = ["buy cheap now", "nice movie", "click for a discount", "my family dog"]
    features = scorer.encode(texts, ["No advertising"] * 4)
    check = export.export_int8_checked(
        model, features, scorer.score(texts, ["No advertising"] * 4), [1, 0, 1, 0], ["r"] * 4
    )
    assert calls == [
        "dynamic, int8 weights per channel, activations per token",
        "dynamic, int8 weights per channel, activations per token; fp32: ffn-in, ffn-out",
    ]
    assert check["written"] is True and check["fp32"] == ["ffn-in", "ffn-out"]
    assert [t["written"] for t in check["tried"]] == [False, True]
    graph = onnx.load(str(model / "model.int8.onnx")).graph
    fp32 = [n.name for n in graph.node if n.op_type == "MatMul" and "/intermediate/dense/" in n.name]
    assert fp32 and Scorer(model).backend == "onnx-int8"
