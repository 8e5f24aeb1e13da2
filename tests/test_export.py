"""ONNX export: the exported model scores like the torch one, and the model dir's integrity checks hold."""

import json

import numpy as np
import pytest

from rulebert.backend.export import export_onnx
from rulebert.cli import main
from rulebert.core.config import TrainConfig
from rulebert.core.errors import RulebertError
from rulebert.core.files import sha256_file
from rulebert.inference.predict import Scorer
from rulebert.model.backbones import load_checkpoint
from rulebert.model.model_dir import ONNX_FILE, ONNX_INT8_FILE, ONNX_RECORD, save_model_dir, verify_model_dir

BODIES = [" ".join(["word"] * n) + " buy cheap" for n in (1, 40, 3, 25, 7, 90)]
RULES = ["No advertising", "No legal advice"] * 3


def test_fp32_export_scores_like_torch_and_keeps_the_dir_valid(model_dir):
    path = export_onnx(model_dir)
    assert path == model_dir / ONNX_FILE
    verify_model_dir(model_dir)  # rulebert.json untouched, its hashes still hold
    record = json.loads((model_dir / ONNX_RECORD).read_text())
    assert record[ONNX_FILE]["sha256"] == sha256_file(path)
    onnx, torch_ = Scorer(model_dir, device="cpu"), Scorer(model_dir, backend="torch")
    assert (onnx.backend, torch_.backend) == ("onnx", "torch") and onnx.model is None
    np.testing.assert_allclose(onnx.score(BODIES, RULES), torch_.score(BODIES, RULES), atol=1e-5)


def test_int8_export_is_preferred_and_close(model_dir):
    export_onnx(model_dir)
    export_onnx(model_dir, int8=True)
    assert set(json.loads((model_dir / ONNX_RECORD).read_text())) == {ONNX_FILE, ONNX_INT8_FILE}
    scorer = Scorer(model_dir, device="cpu")
    assert scorer.backend == "onnx-int8"
    reference = Scorer(model_dir, backend="torch").score(BODIES, RULES)
    np.testing.assert_allclose(scorer.score(BODIES, RULES), reference, atol=0.02)


def test_corrupted_onnx_file_is_refused(model_dir):
    path = export_onnx(model_dir)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(RulebertError, match="corrupted"):
        Scorer(model_dir, device="cpu")


def test_onnx_from_other_weights_is_ignored(model_dir, tiny_checkpoint, caplog):
    export_onnx(model_dir)
    model, tokenizer = load_checkpoint(str(tiny_checkpoint))
    model.classifier.bias.data += 1.0  # a "re-trained" model saved over the same dir
    config = TrainConfig(model=str(tiny_checkpoint), max_length=64)
    save_model_dir(model_dir, model, tokenizer, config=config, base_model="tiny", data={}, metrics={})
    assert Scorer(model_dir, device="cpu").backend == "torch"
    assert "stale" in caplog.text  # a log warning (on stderr from the CLI)
    with pytest.raises(RulebertError, match="no usable ONNX"):
        Scorer(model_dir, backend="onnx")


def test_cli_export_then_predict_says_which_backend(model_dir, data_dir, tmp_path, capsys):
    assert main(["export", "--model-dir", str(model_dir), "--int8"]) == 0
    out = tmp_path / "sub.csv"
    args = ["predict", "--model-dir", str(model_dir), "--test", str(data_dir / "test.csv")]
    assert main([*args, "--output", str(out), "--backend", "onnx", "--no-progress"]) == 0
    assert "backend: onnx-int8" in capsys.readouterr().err
    assert out.read_text().startswith("row_id,rule_violation")


@pytest.mark.parametrize("input_format", ["pair", "template"])
def test_light_tokenizer_encodes_and_pads_like_transformers(model_dir, input_format):
    from transformers import AutoTokenizer

    from rulebert.backend.onnx_backend import LightTokenizer
    from rulebert.domain.text import encode_rows

    hf, light = AutoTokenizer.from_pretrained(str(model_dir)), LightTokenizer(model_dir)
    bodies = [*BODIES, "Ünïcode  ÉMOJI 🙂 and\\nnewlines", " ".join(["long"] * 200)]
    rules = [*RULES, "x" * 3000, "No spam"]  # a rule so long that it is itself shortened
    subs = ["news"] * len(bodies)
    kwargs = {"input_format": input_format, "include_subreddit": True, "max_length": 64}
    expected = encode_rows(hf, rules, bodies, subs, **kwargs)
    assert encode_rows(light, rules, bodies, subs, **kwargs) == expected
    padded, reference = light.pad(expected), hf.pad(expected, return_tensors="np")
    assert set(padded) == set(reference)
    for key in reference:
        np.testing.assert_array_equal(padded[key], reference[key])
