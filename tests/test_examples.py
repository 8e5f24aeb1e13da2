"""A rule's labelled examples used at scoring time: the per-rule model, the Scorer's modes, and every entry
point that takes examples (Python API, ``rulebert score --examples``, ``/v1/score``)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from rulebert.domain.examples import ExampleModel, ExampleModelCache, RuleExamples, normalize_rule
from rulebert.inference.predict import Scorer

from .conftest import RULES, make_comment

MEDICAL = "No medical advice: do not tell people which drugs or doses to take."
DOSES = ["mg", "dose", "pills", "xanax", "sertraline", "prescription", "tablets", "ibuprofen"]
CHAT = ["pizza", "weekend", "concert", "puppy", "sunset", "recipe", "hiking", "football"]


def comments(words: list[str], n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [make_comment(rng, words) for _ in range(n)]


def medical_examples(n: int = 6) -> RuleExamples:
    return RuleExamples.of(comments(DOSES, n, seed=1), comments(CHAT, n, seed=2))


def test_examples_are_distinct_and_a_text_with_both_labels_is_dropped():
    examples = RuleExamples.of(["a", " a ", "b", "", "c"], ["c", "d"])
    assert examples.positive == ("a", "b") and examples.negative == ("d",)
    assert examples.usable and not RuleExamples.of(["a"], []).usable
    assert (
        examples.key("Rule  One") == examples.key("rule one") != RuleExamples.of(["a"], ["d"]).key("rule one")
    )
    assert normalize_rule("  No   Spam ") == "no spam"


def test_example_model_learns_a_rule_from_its_examples_alone():
    """Without an embedder and with a cross-encoder that ranks the examples at chance, the TF-IDF part
    alone separates new comments, and the cross-encoder gets no weight."""
    examples = medical_examples()
    chance = np.random.default_rng(0).uniform(size=len(examples.texts))
    chance[: len(examples.positive)] = np.sort(chance[: len(examples.positive)])  # no signal in its order
    model = ExampleModel.fit(examples, np.full(len(examples.texts), 0.5))
    assert model.cross_encoder_weight == 0 and model.methods == ["tfidf"]
    new = comments(DOSES, 20, seed=3) + comments(CHAT, 20, seed=4)
    labels = np.r_[np.ones(20), np.zeros(20)]
    probability = model.score(new, np.full(40, 0.5))
    assert roc_auc_score(labels, probability) > 0.9
    assert ((probability > 0) & (probability < 1)).all()


def test_a_cross_encoder_that_ranks_the_examples_well_keeps_its_weight():
    examples = medical_examples()
    knows = np.r_[np.full(len(examples.positive), 0.9), np.full(len(examples.negative), 0.1)]
    model = ExampleModel.fit(examples, knows)
    assert model.cross_encoder_weight == pytest.approx(1.0) and "cross-encoder" in model.methods


def test_embeddings_add_a_method_and_evidence():
    examples = medical_examples(4)
    rng = np.random.default_rng(0)
    centre = {1: rng.normal(size=8), 0: rng.normal(size=8)}

    def vectors(labels: np.ndarray) -> np.ndarray:
        v = np.stack([centre[int(y)] + 0.1 * rng.normal(size=8) for y in labels])
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    model = ExampleModel.fit(examples, np.full(8, 0.5), vectors(examples.labels))
    assert model.methods == ["tfidf", "embedding"]
    evidence = model.nearest(vectors(np.array([1, 0])))
    assert [e["label"] for e in evidence] == [1, 0] and evidence[0]["text"] in examples.positive
    with pytest.raises(ValueError, match="vectors"):
        model.score(["x"], np.array([0.5]))


def test_cache_keeps_the_most_recent_rules():
    cache = ExampleModelCache(size=2)
    for key in "abc":
        cache.put(key, key)  # type: ignore[arg-type]
    assert cache.get("a") is None and cache.get("b") == "b" and cache.get("c") == "c"


# ---- the Scorer on a trained tiny model dir ----


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_checkpoint):
    from rulebert.core.config import TrainConfig
    from rulebert.training.train import train_model

    from .conftest import make_frame

    folder = tmp_path_factory.mktemp("examples")
    make_frame(48, seed=1).to_csv(folder / "train.csv", index=False)
    config = TrainConfig(model=str(tiny_checkpoint), epochs=2, lr=1e-3, max_length=48, val_fraction=0.25)
    train_model(config, folder / "train.csv", folder / "model", progress=False)
    return folder / "model"


def test_modes_trained_examples_zero_shot(trained):
    scorer = Scorer(trained)
    trained_rule = next(iter(RULES))
    examples = medical_examples()
    assert scorer.mode(trained_rule, examples) == "trained"  # the model knows it: examples not needed
    assert scorer.mode("  " + trained_rule.upper(), None) == "trained"
    assert scorer.mode(MEDICAL, examples) == "examples"
    assert scorer.mode(MEDICAL, RuleExamples.of(DOSES, [])) == "zero-shot"  # one label only
    assert scorer.mode(MEDICAL, None) == "zero-shot"


def test_examples_change_the_scores_of_an_unseen_rule_and_not_of_a_trained_one(trained):
    scorer = Scorer(trained)
    examples = medical_examples()
    new = comments(DOSES, 10, seed=5) + comments(CHAT, 10, seed=6)
    labels = np.r_[np.ones(10), np.zeros(10)]
    n = len(new)
    kwargs = {"positive_examples": [examples.positive] * n, "negative_examples": [examples.negative] * n}
    without = scorer.score(new, MEDICAL)
    details = scorer.score_details(new, [MEDICAL] * n, **kwargs)
    assert set(details["mode"]) == {"examples"}
    assert roc_auc_score(labels, details["probability"]) > 0.9 > roc_auc_score(labels, without) - 0.0
    assert all(
        e is not None and e["label"] in (0, 1) for e in details["evidence"]
    )  # the embedder was exported
    trained_rule = next(iter(RULES))
    assert np.array_equal(scorer.score(new, trained_rule, **kwargs), scorer.score(new, trained_rule))


def test_predict_takes_pairs_like_a_cross_encoder(trained):
    scorer = Scorer(trained)
    examples = {"positive": list(medical_examples().positive), "negative": list(medical_examples().negative)}
    one = scorer.predict((MEDICAL, "take 200 mg of sertraline"), examples=examples, details=True)
    assert len(one) == 1 and one[0]["mode"] == "examples" and isinstance(one[0]["flagged"], bool)
    # mode examples: flagged on the rule's own scale (its examples calibrate the probability), not at the
    # model's threshold, which was chosen on the training rules' scores
    assert scorer.flag_threshold("examples") == 0.5 and scorer.flag_threshold("zero-shot") == scorer.threshold
    assert one[0]["flagged"] == (one[0]["probability"] >= 0.5)
    assert one[0]["threshold"] == 0.5
    many = scorer.predict(
        [(MEDICAL, "a"), (next(iter(RULES)), "buy cheap http")], examples={MEDICAL: examples}
    )
    assert many.shape == (2,)
    assert scorer.score("one comment, not characters", MEDICAL).shape == (1,)


def test_score_command_uses_the_examples(trained, tmp_path):
    from rulebert.cli import main

    examples = medical_examples()
    (tmp_path / "examples.csv").write_text(
        "text,label\n"
        + "".join(f"{t},1\n" for t in examples.positive)
        + "".join(f"{t},0\n" for t in examples.negative)
    )
    new = comments(DOSES, 8, seed=7) + comments(CHAT, 8, seed=8)
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in new))
    base = ["score", "--model-dir", str(trained), "--rule", MEDICAL, "--input", str(tmp_path / "in.jsonl")]
    assert main([*base, "--output", str(tmp_path / "plain.jsonl"), "--no-progress"]) == 0
    assert main([*base, "--examples", str(tmp_path / "examples.csv"), "--output", str(tmp_path / "ex.jsonl"),
                 "--no-progress"]) == 0  # fmt: skip
    plain = [json.loads(line)["probability"] for line in (tmp_path / "plain.jsonl").read_text().splitlines()]
    used = [json.loads(line)["probability"] for line in (tmp_path / "ex.jsonl").read_text().splitlines()]
    labels = np.r_[np.ones(8), np.zeros(8)]
    assert plain != used and roc_auc_score(labels, used) > 0.9


def test_http_answers_carry_mode_flagged_and_evidence(trained):
    from fastapi.testclient import TestClient

    from rulebert.server.app import create_app

    client = TestClient(create_app(trained))
    examples = medical_examples()
    rule = {
        "text": MEDICAL,
        "positive_examples": list(examples.positive),
        "negative_examples": list(examples.negative),
    }
    body = {"comment": "take two xanax pills and 200 mg sertraline", "rules": [rule, {"text": MEDICAL}]}
    scores = client.post("/v1/score", json=body).json()["scores"]
    assert [s["mode"] for s in scores] == ["examples", "zero-shot"]
    assert scores[0]["probability"] != scores[1]["probability"] and scores[0]["evidence"]["label"] in (0, 1)
    model_threshold = client.get("/v1/model").json()["threshold"]
    assert scores[0]["flagged"] == (scores[0]["probability"] >= 0.5)  # examples: the rule's own scale
    assert scores[1]["flagged"] == (scores[1]["probability"] >= model_threshold)
    assert [s["threshold"] for s in scores] == [0.5, model_threshold]  # each answer says where it flags
    lenient = client.post("/v1/score", json={**body, "threshold": 1.0}).json()["scores"]
    assert not any(s["flagged"] for s in lenient)
    batch = {"items": [{"id": "item-7", "comment": "hello", "rule": {"text": next(iter(RULES))}}]}
    answer = client.post("/v1/score/batch", json=batch).json()["scores"][0]
    assert answer["mode"] == "trained" and answer["item_id"] == "item-7"


# ---- a trained rule blended with its examples (blend_examples) ----


def test_a_trained_rule_blends_with_enough_examples_and_keeps_its_mode(trained):
    from dataclasses import replace

    from rulebert.domain.examples import MIN_BLEND_EXAMPLES

    scorer = Scorer(trained)
    trained_rule = next(iter(RULES))
    positive, negative = RULES[trained_rule]
    many = RuleExamples.of(comments(positive, 12, seed=3), comments(negative, 12, seed=4))
    few = RuleExamples.of(many.positive[: MIN_BLEND_EXAMPLES - 1], many.negative)
    assert many.blendable and not few.blendable
    new = comments(positive, 6, seed=9) + comments(negative, 6, seed=10)
    n = len(new)

    def scored(examples: RuleExamples) -> dict:
        return scorer.score_details(
            new, [trained_rule] * n, positive_examples=[examples.positive] * n,
            negative_examples=[examples.negative] * n,
        )  # fmt: skip

    plain = scorer.score(new, trained_rule)
    blended = scored(many)
    assert set(blended["mode"]) == {"trained"} and all(e is not None for e in blended["evidence"])
    assert not np.allclose(blended["probability"], plain)
    assert np.array_equal(scored(few)["probability"], plain)  # nine of one label: the model alone
    scorer.config = replace(scorer.config, blend_examples=False)
    assert np.array_equal(scored(many)["probability"], plain)


def test_predict_file_pools_each_rules_example_cells(trained, tmp_path):
    from rulebert.pipeline import pooled_examples, predict_file

    from .conftest import make_frame

    test = make_frame(40, seed=11, labelled=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    pooled = pooled_examples(test)
    assert set(pooled) == set(test["rule"]) and all(e.blendable for e in pooled.values())
    rows = test[test["rule"] == next(iter(RULES))]
    assert set(pooled[next(iter(RULES))].positive) == set(rows["positive_example_1"]) | set(
        rows["positive_example_2"]
    )
    submission = predict_file(trained, tmp_path / "test.csv", tmp_path / "out.csv", progress=False)
    alone = Scorer(trained).score(test["body"].tolist(), test["rule"].tolist())
    assert not np.allclose(submission["rule_violation"], alone)
    assert pooled_examples(test.drop(columns=[c for c in test.columns if "example" in c])) == {}
    small = test.iloc[:2]  # two rows: two cells per label, too few to blend
    small.to_csv(tmp_path / "small.csv", index=False)
    out = predict_file(trained, tmp_path / "small.csv", tmp_path / "small_out.csv", progress=False)
    assert np.array_equal(out["rule_violation"], Scorer(trained).score(small["body"], small["rule"].tolist()))


def test_a_trained_models_score_enters_as_a_bounded_quantile():
    examples = medical_examples(8)
    n = len(examples.texts)
    in_sample = np.where(examples.labels == 1, 0.99, 0.01) + np.linspace(-0.005, 0.005, n)
    model = ExampleModel.fit(examples, in_sample, trained=True)
    assert model.cross_encoder_weight == 1.0 and "cross-encoder" in model.methods
    text = ["take 200 mg of sertraline"] * 4
    ce = np.array([0.001, 0.5, 0.999999, 1 - 1e-12])
    p = model.score(text, ce)
    assert np.all(np.diff(p) >= 0) and p[0] < p[1] < p[2]
    assert p[2] == p[3]  # beyond every example's score: the same top quantile, however confident
    untrained = ExampleModel.fit(examples, in_sample)
    assert untrained._trained_reference is None and model._trained_reference is not None


@pytest.mark.parametrize("trained", [False, True])
def test_examples_without_words_still_fit_and_score(trained):
    """Found by fuzzing predict: a file whose example cells are quote marks pooled into a rule's examples."""
    for positive, negative in ((['"'] * 1 + ['""'], ["''", "!!"]), (["a"], ["b"])):
        examples = RuleExamples.of(positive, negative)
        model = ExampleModel.fit(examples, np.full(len(examples.texts), 0.5), trained=trained)
        scores = model.score(['"', "hello there", "b"], np.array([0.2, 0.5, 0.9]))
        assert scores.shape == (3,) and np.isfinite(scores).all()


def test_a_scoring_call_embeds_each_distinct_text_once_and_the_memo_changes_no_score(trained, monkeypatch):
    """A competition file's comments are often its example cells: one call embeds each text once (by text
    stripped), and the scores equal those of embedding every list on its own."""
    scorer = Scorer(trained)
    examples = medical_examples(8)
    new = [" " + examples.positive[0] + " ", examples.negative[0], *comments(DOSES + CHAT, 6, seed=21)]
    n = len(new)
    kwargs = {"positive_examples": [examples.positive] * n, "negative_examples": [examples.negative] * n}
    scorer._embed(["load the embedder"])
    embedder, seen = scorer._embedder, []
    original = embedder.embed_texts

    def counting(texts, max_length):
        seen.extend(texts)
        return original(texts, max_length)

    embedder.embed_texts = counting
    memoised = scorer.score(new, [MEDICAL] * n, **kwargs)
    assert len(seen) == len({t.strip() for t in [*examples.texts, *new]}) == len(set(seen))

    import rulebert.inference.predict as predict_module

    monkeypatch.setattr(predict_module, "_EmbeddingMemo", lambda embed: embed)  # each list on its own
    plain = Scorer(trained).score(new, [MEDICAL] * n, **kwargs)
    assert np.allclose(memoised, plain, atol=1e-6)
