"""The sentence embedder is its own setting (issue 25): ``--embedder`` / ``rulebert export --embedder``.

A model dir's embedder lives in ``embedder/`` with its own tokenizer, so it may come from another checkpoint
than the classifier (all-mpnet-base-v2 beside MiniLM). Here the other checkpoint is a tiny random MPNet with
a vocabulary of its own and no token type ids: two ways it differs from the classifier's BERT.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rulebert.backend.export import export_embedder
from rulebert.backend.onnx_backend import OnnxEmbedder
from rulebert.core.config import TrainConfig
from rulebert.core.errors import RulebertError
from rulebert.inference.predict import Scorer
from rulebert.model.model_dir import (
    EMBEDDER_DIR,
    EMBEDDER_FILE,
    ONNX_RECORD,
    check_output_dir,
    find_embedder,
    read_onnx_record,
    record_onnx,
)

WORDS = "buy cheap click now discount nice movie my dog river weather court".split()
EXAMPLES = {"positive": ["buy cheap now", "click for a discount"], "negative": ["nice movie", "my dog"]}


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer MPNet whose WordPiece vocabulary is WORDS alone (ids unlike MiniLM's)."""
    import torch
    from transformers import BertTokenizerFast, MPNetConfig, MPNetModel

    folder = tmp_path_factory.mktemp("tiny-mpnet")
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(tokens)})
    config = MPNetConfig(
        vocab_size=len(WORDS) + 5,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    MPNetModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_an_embedder_from_another_checkpoint_reads_its_own_tokenizer(model_dir, other_checkpoint):
    path = export_embedder(model_dir, str(other_checkpoint))
    assert path == model_dir / EMBEDDER_DIR / EMBEDDER_FILE and find_embedder(model_dir) == path
    embedder = OnnxEmbedder(path)
    assert embedder.backend.input_names == ["input_ids", "attention_mask"]  # MPNet takes no token types
    ids = embedder.tokenizer(["buy cheap"])["input_ids"][0]
    assert ids == [2, 5, 6, 3]  # [CLS] buy cheap [SEP] in the tiny vocabulary, not MiniLM's ids
    entry = read_onnx_record(model_dir)[f"{EMBEDDER_DIR}/{EMBEDDER_FILE}"]
    assert entry["source"] == str(other_checkpoint) and "tokenizer.json" in entry["tokenizer_sha256"]


def test_the_other_embedder_gives_the_checkpoints_own_sentence_vectors(model_dir, other_checkpoint):
    """int8 mean-pooled vectors point where the fp32 checkpoint's do (random tiny weights: cosine > 0.9)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    texts = ["buy cheap now", "my dog likes the river", "nice movie", "click click click for a discount"]
    vectors = OnnxEmbedder(export_embedder(model_dir, str(other_checkpoint))).embed_texts(texts, 64)
    tokenizer, model = (
        AutoTokenizer.from_pretrained(other_checkpoint),
        AutoModel.from_pretrained(other_checkpoint),
    )
    batch = tokenizer(texts, padding=True, return_tensors="pt", return_token_type_ids=False)
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    assert np.all((vectors * expected).sum(1) > 0.9)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)


def test_scoring_with_examples_uses_the_embedder_folder(model_dir, other_checkpoint):
    export_embedder(model_dir, str(other_checkpoint))
    scorer = Scorer(model_dir, device="cpu")
    assert scorer.has_embedder
    scores = scorer.predict([("No spam.", "buy cheap now"), ("No spam.", "my dog")], examples=EXAMPLES)
    assert scores.shape == (2,) and np.all((scores >= 0) & (scores <= 1)) and scores[0] > scores[1]
    assert scorer._embedder.backend.path == model_dir / EMBEDDER_DIR / EMBEDDER_FILE


def test_the_server_says_which_checkpoint_embeds(model_dir, other_checkpoint, tmp_path):
    import httpx

    from tests.serving import start_server

    export_embedder(model_dir, str(other_checkpoint))
    assert Scorer(model_dir, device="cpu").embedder_checkpoint == str(other_checkpoint)
    with start_server(model_dir, tmp_path / "server.log") as server:
        info = httpx.get(server.url + "/v1/model").json()
    assert info["embedder"] is True
    assert info["embedder_checkpoint"] == other_checkpoint.name  # a folder's name, never the host's path


def test_a_changed_embedder_tokenizer_is_refused(model_dir, other_checkpoint):
    export_embedder(model_dir, str(other_checkpoint))
    tokenizer_file = model_dir / EMBEDDER_DIR / "tokenizer.json"
    tokenizer_file.write_text(tokenizer_file.read_text().replace('"dog"', '"cat"'))
    with pytest.raises(RulebertError, match=r"embedder/tokenizer\.json: the embedder's tokenizer file"):
        find_embedder(model_dir)


def test_an_older_top_level_embedder_loads_and_a_new_export_replaces_it(
    model_dir, tiny_checkpoint, other_checkpoint
):
    """Model dirs from before ``embedder/`` have ``embedder.int8.onnx`` at the top, read with their own
    tokenizer; exporting an embedder removes it and its onnx.json entry."""
    export_embedder(model_dir, str(tiny_checkpoint))
    folder = model_dir / EMBEDDER_DIR
    shutil.move(folder / EMBEDDER_FILE, model_dir / EMBEDDER_FILE)  # the layout older versions wrote
    shutil.rmtree(folder)
    record = read_onnx_record(model_dir)
    record.pop(f"{EMBEDDER_DIR}/{EMBEDDER_FILE}")
    (model_dir / ONNX_RECORD).write_text(json.dumps(record))
    record_onnx(model_dir, model_dir / EMBEDDER_FILE, {"role": "embedder", "source": str(tiny_checkpoint)})
    assert find_embedder(model_dir) == model_dir / EMBEDDER_FILE
    assert OnnxEmbedder(model_dir / EMBEDDER_FILE).embed_texts(["buy cheap"], 64).shape == (1, 32)

    export_embedder(model_dir, str(other_checkpoint))
    assert not (model_dir / EMBEDDER_FILE).exists() and EMBEDDER_FILE not in read_onnx_record(model_dir)
    assert find_embedder(model_dir) == folder / EMBEDDER_FILE


def export_cli(model_dir: Path, embedder: Path) -> subprocess.CompletedProcess:
    command = ["export", "--model-dir", str(model_dir), "--embedder", str(embedder)]
    return subprocess.run(
        [sys.executable, "-m", "rulebert.cli", *command], capture_output=True, text=True, timeout=300
    )


def test_cli_export_embedder_swaps_only_the_embedder(model_dir, other_checkpoint):
    before = {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file() and p.name != ONNX_RECORD}
    done = export_cli(model_dir, other_checkpoint)
    assert done.returncode == 0, done.stderr
    assert "embedder/embedder.int8.onnx" in done.stderr
    assert read_onnx_record(model_dir)[f"{EMBEDDER_DIR}/{EMBEDDER_FILE}"]["source"] == str(other_checkpoint)
    after = {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file() and p.name != ONNX_RECORD}
    assert after == before  # the classifier, its record and tokenizer untouched


def test_cli_export_embedder_names_a_missing_checkpoint(model_dir, tmp_path):
    done = export_cli(model_dir, tmp_path / "none")
    assert done.returncode != 0 and "none: model path does not exist" in done.stderr
    assert find_embedder(model_dir) is None


def test_embedder_setting_is_checked_and_a_flag():
    with pytest.raises(RulebertError, match="--embedder must be a name or a folder"):
        TrainConfig(embedder=" ")
    from rulebert.core.config import settings

    assert "--embedder" in {s.flag for s in settings()}
    assert TrainConfig().embedder is None


def test_a_model_dir_saved_before_the_embedder_setting_still_matches_its_config(model_dir):
    """Re-running training into a dir whose rulebert.json predates a new field is not 'another model'."""
    record_path = model_dir / "rulebert.json"
    record = json.loads(record_path.read_text())
    record["config"].pop("embedder")
    record_path.write_text(json.dumps(record))
    check_output_dir(model_dir, TrainConfig.from_dict(record["config"]), record["data"])
    with pytest.raises(RulebertError, match="already holds a different model"):
        check_output_dir(model_dir, TrainConfig(**{**record["config"], "embedder": "mpnet"}), record["data"])


def test_a_missing_embedder_fails_before_training(data_dir, tiny_checkpoint, tmp_path):
    from rulebert.training.train import train_model

    config = TrainConfig(model=str(tiny_checkpoint), embedder=str(tmp_path / "none"), epochs=1, max_length=32)
    with pytest.raises(RulebertError, match="none: model path does not exist"):
        train_model(config, data_dir / "train.csv", tmp_path / "model", progress=False)
    assert not (tmp_path / "model" / "checkpoints").is_dir() or not any(
        (tmp_path / "model" / "checkpoints").iterdir()
    )
