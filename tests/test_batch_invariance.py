"""A row's int8 score is a function of the row alone, not of the rows that share its batch (issue 26).

ONNX Runtime's dynamic quantisation computed one activation scale per batch, so the same comment scored
alone and inside a batch got different probabilities. The export now quantises activations per token
(:mod:`rulebert.backend.rowquant`): a token's codes depend on its own values only.

The bound: 1e-6, not exact equality. Per-token codes make the int8 matmuls exact functions of the row,
but the fp32 operators between them (attention's MatMul and Softmax, LayerNorm) may pick another kernel
blocking, and so another summation order, for another batch shape; a last-bit difference could then move
one code by one step. Measured: exactly 0 here and on MiniLM (train.csv comments); the per-batch
graph differed by 2.8e-4 (scores) and 9e-5 (embedder vectors) on this tiny model, 0.25 on MiniLM.
"""

import logging

import numpy as np
import pytest

from rulebert.backend.export import _int8_check, export_embedder, export_onnx
from rulebert.backend.onnx_backend import OnnxBackend, OnnxEmbedder
from rulebert.domain.text import encode_texts
from rulebert.inference.predict import Scorer

BOUND = 1e-6
RULE = "No advertising: spam and promotional links are not allowed."
OTHER_RULE = "No legal advice: do not offer or request legal advice."
WORDS = "buy cheap click the lawyer court movie weather discount river dog".split()
# Lengths from 1 to 60 words, so the batches below mix short rows with long ones (and their padding).
BODIES = [
    " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(n))
    for i, n in enumerate([1, 60, 5, 33, 12, 2, 48, 9])
]


def _compositions(n: int) -> list[list[int]]:
    """Batches of other rows around each row: all together, reversed, halves, pairs of unlike length."""
    rows = list(range(n))
    return [rows, rows[::-1], rows[: n // 2], rows[n // 2 :], [0, 1], [1, 0, 2], [5, 6, 3]]


def test_int8_scores_do_not_depend_on_the_batch(model_dir):
    export_onnx(model_dir, int8=True)
    scorer = Scorer(model_dir, device="cpu")
    assert scorer.backend == "onnx-int8"
    rules = [RULE, OTHER_RULE] * (len(BODIES) // 2)
    alone = np.array([scorer.score([b], [r])[0] for b, r in zip(BODIES, rules, strict=True)])
    for batch in _compositions(len(BODIES)):
        scored = scorer.score([BODIES[i] for i in batch], [rules[i] for i in batch])
        np.testing.assert_allclose(scored, alone[batch], rtol=0, atol=BOUND)
    # The same rows through the runtime directly, in batches cut by other token budgets.
    features = scorer.encode(BODIES, rules)
    for max_tokens, max_rows in [(64, 256), (200, 3), (1 << 20, 256)]:
        batched = scorer.runtime.predict(features, max_tokens=max_tokens, max_rows=max_rows)
        np.testing.assert_allclose(batched, alone, rtol=0, atol=BOUND)


def test_int8_graph_has_no_per_batch_scale(model_dir):
    import onnx

    graph = onnx.load(str(export_onnx(model_dir, int8=True))).graph
    ops = {n.op_type for n in graph.node}
    assert "DynamicQuantizeLinear" not in ops and "MatMulIntegerToFloat" in ops


def test_embedder_vectors_do_not_depend_on_the_batch(model_dir, tiny_checkpoint):
    embedder = OnnxEmbedder(export_embedder(model_dir, str(tiny_checkpoint)))
    features = encode_texts(embedder.tokenizer, BODIES, 64)
    alone = np.stack([embedder.embed([f])[0] for f in features])
    for batch in _compositions(len(BODIES)):
        np.testing.assert_allclose(
            embedder.embed([features[i] for i in batch]), alone[batch], rtol=0, atol=BOUND
        )


def test_scores_learnt_from_examples_do_not_depend_on_the_batch(model_dir, tiny_checkpoint):
    """A rule the model was not trained on, learnt from its examples through the int8 embedder."""
    export_onnx(model_dir, int8=True)
    export_embedder(model_dir, str(tiny_checkpoint))
    scorer = Scorer(model_dir, device="cpu")
    assert scorer.has_embedder
    examples = {"positive": ["buy cheap now", "click for a discount"], "negative": ["nice movie", "my dog"]}
    alone = np.array([scorer.predict((RULE, b), examples=examples)[0] for b in BODIES])
    for batch in _compositions(len(BODIES)):
        scored = scorer.predict([(RULE, BODIES[i]) for i in batch], examples=examples)
        np.testing.assert_allclose(scored, alone[batch], rtol=0, atol=BOUND)


@pytest.mark.parametrize("per_token", [True, False])
def test_export_check_refuses_a_file_whose_scores_depend_on_the_batch(model_dir, monkeypatch, per_token):
    """The export's check scores its rows alone and in batches; a per-batch graph fails it. The tolerance
    is scaled to this tiny random model, whose per-batch graph moves a score by ~4e-4 (MiniLM: up to 0.25)."""
    import rulebert.backend.export
    import rulebert.backend.rowquant

    monkeypatch.setattr(rulebert.backend.export, "BATCH_TOLERANCE", 1e-5)
    if not per_token:  # today's graph before the fix: quantize_dynamic's per-batch scales left in place
        monkeypatch.setattr(rulebert.backend.rowquant, "per_token_activations", lambda model, **_: 0)
    scorer = Scorer(model_dir, backend="torch")
    bodies = BODIES * 4
    rules = [RULE] * len(bodies)
    features = scorer.encode(bodies, rules)
    path = export_onnx(model_dir, int8=True)
    scores = OnnxBackend(path).predict(features)  # the int8 file's own scores: rank and AUC checks pass
    labels = np.arange(len(bodies)) % 2
    kept, why, check = _int8_check(path, features, scores, labels, np.array(rules))
    if per_token:
        assert kept and check["alone_vs_batched"] <= BOUND, why
    else:
        assert not kept and "alone and in a batch" in why and check["alone_vs_batched"] > 1e-5


def test_an_older_per_batch_file_is_quantised_per_token_as_it_loads(model_dir, caplog):
    """A model dir exported before per-token scales: its file stays (its hash is the recorded one), the
    scorer rewrites the graph in memory, and says so."""
    from rulebert.backend.export import int8_variant_file
    from rulebert.model.backbones import load_checkpoint
    from rulebert.model.model_dir import read_onnx_record, record_onnx

    path = export_onnx(model_dir, int8=True)
    entry = read_onnx_record(model_dir)[path.name]
    model, tokenizer = load_checkpoint(str(model_dir))
    int8_variant_file(model, tokenizer, path, activations="per-batch")  # what the older export wrote
    entry = {k: v for k, v in entry.items() if k != "sha256"} | {
        "quantization": "dynamic, int8 weights per channel"
    }
    record_onnx(model_dir, path, entry)
    features = Scorer(model_dir, backend="torch").encode(BODIES, [RULE] * len(BODIES))
    with caplog.at_level(logging.INFO, logger="rulebert"):  # the CLI shows it as "rulebert: note: ..."
        older = OnnxBackend(path).predict(features)
    assert "one activation scale per batch" in caplog.text
    alone = np.array([OnnxBackend(path).predict([f])[0] for f in features])
    np.testing.assert_allclose(older, alone, rtol=0, atol=BOUND)
