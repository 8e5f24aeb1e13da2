import numpy as np
import pandas as pd
import pytest

from rulebert.backend.batching import token_budget_batches
from rulebert.core.errors import RulebertError
from rulebert.inference.predict import Scorer
from rulebert.pipeline import check_submission, predict_file


def test_token_budget_batches_cover_every_row_once():
    lengths = [5, 300, 17, 17, 90, 3, 250, 64]
    batches = token_budget_batches(lengths, max_tokens=512, max_rows=3)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 3 and max(lengths[i] for i in batch) * len(batch) <= max(512, max(lengths))
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)


def test_scores_do_not_depend_on_batching(model_dir):
    scorer = Scorer(model_dir)
    bodies = [" ".join(["word"] * n) for n in (1, 40, 3, 25, 7)]
    rules = ["rule"] * len(bodies)
    one_by_one = np.array([scorer.score([b], ["rule"])[0] for b in bodies])
    together = scorer.score(bodies, rules)
    assert together.shape == (5,) and np.all((together > 0) & (together < 1))
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)


def test_predict_file_keeps_row_order_and_checks_the_sample(model_dir, data_dir, tmp_path):
    out = tmp_path / "sub.csv"
    submission = predict_file(
        model_dir, data_dir / "test.csv", out, sample_path=data_dir / "sample_submission.csv", progress=False
    )
    written = pd.read_csv(out)
    assert list(written.columns) == ["row_id", "rule_violation"]
    assert written["row_id"].tolist() == pd.read_csv(data_dir / "test.csv")["row_id"].tolist()
    np.testing.assert_allclose(written["rule_violation"], submission["rule_violation"], rtol=1e-6)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_sample_mismatch_fails_and_writes_nothing(model_dir, data_dir, tmp_path):
    sample = pd.read_csv(data_dir / "sample_submission.csv")
    sample.iloc[:-1].to_csv(tmp_path / "short_sample.csv", index=False)
    out = tmp_path / "sub.csv"
    with pytest.raises(RulebertError, match="row_ids differ"):
        predict_file(
            model_dir, data_dir / "test.csv", out, sample_path=tmp_path / "short_sample.csv", progress=False
        )
    assert not out.exists()


def test_check_submission_columns(tmp_path):
    pd.DataFrame({"row_id": [1], "score": [0.5]}).to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(RulebertError, match="columns"):
        check_submission(pd.DataFrame({"row_id": [1], "rule_violation": [0.5]}), tmp_path / "s.csv")


PAIRS = [("No advertising", " ".join(["word"] * n)) for n in (1, 40, 3, 25, 7)]


def test_predict_batch_size_reaches_the_backend(model_dir, monkeypatch):
    from rulebert.backend import batching

    sizes: list[list[int]] = []
    real = batching.token_budget_batches

    def spy(lengths, max_tokens, max_rows):
        batches = real(lengths, max_tokens, max_rows)
        sizes.append([len(b) for b in batches])
        return batches

    monkeypatch.setattr(batching, "token_budget_batches", spy)
    for backend in ("torch", "onnx"):
        if backend == "onnx":
            from rulebert.backend.export import export_onnx

            export_onnx(model_dir)
        scorer = Scorer(model_dir, backend=backend)
        sizes.clear()
        default = scorer.predict(PAIRS)
        small = scorer.predict(PAIRS, batch_size=2)
        assert sizes == [[5], [2, 2, 1]], backend  # the token budget would take all five short rows at once
        np.testing.assert_allclose(small, default, atol=1e-5)
    with pytest.raises(RulebertError, match="batch_size"):
        scorer.predict(PAIRS, batch_size=0)


def test_predict_is_typed_by_details_and_the_old_methods_are_aliases(model_dir):
    import typing

    returns = [o.__annotations__["return"] for o in typing.get_overloads(Scorer.predict)]
    assert returns == ["np.ndarray", "list[dict[str, Any]]"]
    scorer = Scorer(model_dir)
    rules, bodies = [r for r, _ in PAIRS], [b for _, b in PAIRS]
    plain = scorer.predict(PAIRS)
    detailed = scorer.predict(PAIRS, details=True)
    assert isinstance(plain, np.ndarray) and plain.shape == (5,)
    assert isinstance(detailed, list) and {"probability", "flagged", "mode", "evidence"} <= set(detailed[0])
    np.testing.assert_array_equal(scorer.score(bodies, rules), plain)
    np.testing.assert_array_equal(
        scorer.score(bodies, rules, batch_size=1), scorer.predict(PAIRS, batch_size=1)
    )
    details = scorer.score_details(bodies, rules)
    np.testing.assert_array_equal(details["probability"], [d["probability"] for d in detailed])
    assert details["mode"] == [d["mode"] for d in detailed] == ["zero-shot"] * 5


def test_the_submission_writer_lives_in_the_pipeline_alone():
    """inference does not reach up to the front end for it: the old names there are gone."""
    import rulebert
    import rulebert.inference.predict as inference
    from rulebert import pipeline

    assert predict_file is pipeline.predict_file is rulebert.predict_file
    for name in ("predict_file", "check_submission", "pooled_examples", "SUBMISSION_COLUMNS"):
        assert hasattr(pipeline, name) and not hasattr(inference, name), name
