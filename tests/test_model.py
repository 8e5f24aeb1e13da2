import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from rulebert.core.config import TrainConfig
from rulebert.core.errors import RulebertError
from rulebert.model.backbones import load_checkpoint, resolve_checkpoint
from rulebert.model.model_dir import RECORD_FILE, check_output_dir, load_model_dir, save_model_dir


def test_default_checkpoint_resolves_to_the_bundled_minilm():
    path = resolve_checkpoint("default")
    config = json.loads((__import__("pathlib").Path(path) / "config.json").read_text())
    assert config["model_type"] == "bert" and config["hidden_size"] == 384


def test_missing_local_path_is_a_clear_error(tmp_path):
    with pytest.raises(RulebertError, match="model path does not exist"):
        resolve_checkpoint(str(tmp_path / "no-such-model"))


def test_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(RulebertError, match="no config.json"):
        resolve_checkpoint(str(tmp_path))


def test_hub_name_offline_fails_fast_with_a_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RulebertError, match="not a local folder nor in the Hugging Face cache, and offline"):
        load_checkpoint("someone/surely-not-cached-model")


def test_fresh_binary_head(tiny_checkpoint):
    model, tokenizer = load_checkpoint(str(tiny_checkpoint))
    assert model.config.num_labels == 2 and model.config.id2label == {0: "ok", 1: "violation"}
    batch = tokenizer(["rule"], ["a comment"], return_tensors="pt")
    assert model(**batch).logits.shape == (1, 2)


def test_head_is_replaced_even_when_the_checkpoint_has_one(tiny_checkpoint, tmp_path):
    model, tokenizer = load_checkpoint(str(tiny_checkpoint))
    with torch.no_grad():
        model.classifier.weight.fill_(7.0)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    again, _ = load_checkpoint(str(tmp_path))
    assert not torch.all(again.classifier.weight == 7.0)


def saved_dir(tiny_checkpoint, tmp_path):
    model, tokenizer = load_checkpoint(str(tiny_checkpoint))
    out = tmp_path / "model"
    save_model_dir(
        out,
        model,
        tokenizer,
        config=TrainConfig(model=str(tiny_checkpoint)),
        base_model="x",
        data={"rows": 3},
        metrics={"validation": None},
    )
    return model, tokenizer, out


def test_model_dir_round_trip_and_hf_compatibility(tiny_checkpoint, tmp_path):
    model, tokenizer, out = saved_dir(tiny_checkpoint, tmp_path)
    record = json.loads((out / RECORD_FILE).read_text())
    assert record["config"]["model"] == str(tiny_checkpoint)
    assert set(record["weights_sha256"]) == {"model.safetensors"}
    assert {"torch", "transformers"} <= set(record["versions"])
    assert not list(out.glob(".saving-*"))
    loaded, loaded_tokenizer, config, _ = load_model_dir(out)
    batch = tokenizer(["rule"], ["a comment"], return_tensors="pt")
    model.eval()
    with torch.no_grad():
        expected = model(**batch).logits
        assert torch.allclose(loaded(**batch).logits, expected)
        plain_hf = AutoModelForSequenceClassification.from_pretrained(out)  # no rulebert needed to load it
        assert torch.allclose(plain_hf.eval()(**batch).logits, expected)
    assert config.model == str(tiny_checkpoint)


def test_corrupted_weights_are_detected(tiny_checkpoint, tmp_path):
    _, _, out = saved_dir(tiny_checkpoint, tmp_path)
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(RulebertError, match="model.safetensors: weight file is corrupted or truncated"):
        load_model_dir(out)


def test_incompatible_format_version(tiny_checkpoint, tmp_path):
    _, _, out = saved_dir(tiny_checkpoint, tmp_path)
    record = json.loads((out / RECORD_FILE).read_text())
    record["format_version"] = 99
    (out / RECORD_FILE).write_text(json.dumps(record))
    with pytest.raises(RulebertError, match="model format 99 is not supported"):
        load_model_dir(out)


def test_unfinished_dir_is_not_a_model(tmp_path):
    with pytest.raises(RulebertError, match="not a rulebert model dir"):
        load_model_dir(tmp_path)
    with pytest.raises(RulebertError, match="does not exist"):
        load_model_dir(tmp_path / "missing")


def test_output_dir_with_a_different_model_is_refused(tiny_checkpoint, tmp_path):
    _, _, out = saved_dir(tiny_checkpoint, tmp_path)
    same = TrainConfig(model=str(tiny_checkpoint))
    check_output_dir(out, same, {"rows": 3})  # the same model: fine to write again
    with pytest.raises(RulebertError, match="already holds a different model"):
        check_output_dir(out, TrainConfig(model=str(tiny_checkpoint), epochs=9), {"rows": 3})
    with pytest.raises(RulebertError, match="already holds a different model"):
        check_output_dir(out, same, {"rows": 4})
