"""Rules as data (RULES.jsonl, the SQLite store) and adaptation of a trained model dir to new rules."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from rulebert.core.errors import RulebertError
from rulebert.domain.rules import StoredRule, read_rules_jsonl, rules_from_competition
from rulebert.model.model_dir import read_metrics, read_record, verify_model_dir
from rulebert.server.rule_store import RuleStore

from .conftest import make_comment, make_frame

MEDICAL = "No medical advice: do not tell people which medicine or dose to take."
PILLS = ["dose", "mg", "pill", "xanax", "sertraline", "doctor", "take", "prescription"]
CHAT = ["pizza", "music", "garden", "holiday", "coffee", "dog", "paint", "river"]


def medical_rule(n: int = 6, seed: int = 0) -> StoredRule:
    import random

    rng = random.Random(seed)
    return StoredRule(
        "medical",
        MEDICAL,
        tuple(make_comment(rng, PILLS) for _ in range(n)),
        tuple(make_comment(rng, CHAT) for _ in range(n)),
    )


def write_rules(path: Path, rules: list[StoredRule]) -> Path:
    path.write_text(
        "".join(json.dumps({k: v for k, v in r.to_json().items() if k != "updated"}) + "\n" for r in rules)
    )
    return path


# --- RULES.jsonl -------------------------------------------------------------------------------------


def test_rules_jsonl_round_trip(tmp_path: Path) -> None:
    rule = medical_rule()
    assert read_rules_jsonl(write_rules(tmp_path / "rules.jsonl", [rule])) == [rule]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "a", "text": "x"', "rules.jsonl: line 2: not valid JSON"),
        ('{"id": "a b", "text": "x"}', "rules.jsonl: line 2: id 'a b' must be"),
        ('{"id": "a", "text": ""}', "rules.jsonl: line 2: field 'text' must be a non-empty string"),
        ('{"id": "a", "text": "x", "positive_examples": "no"}', "field 'positive_examples' must be a list"),
        ('{"id": "a", "text": "x", "colour": 1}', "rules.jsonl: line 2: unknown field 'colour'"),
        ('{"id": "ok", "text": "again"}', "rules.jsonl: line 2: id 'ok' appears twice"),
        ("[1, 2]", "rules.jsonl: line 2: expected a JSON object, got list"),
    ],
)
def test_rules_jsonl_errors_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "rules.jsonl"
    path.write_text('{"id": "ok", "text": "a rule"}\n' + line + "\n")
    with pytest.raises(RulebertError, match=message.replace("(", r"\(").replace("[", r"\[")):
        read_rules_jsonl(path)


def test_rules_jsonl_is_read_as_every_jsonl_input_is(tmp_path: Path) -> None:
    """The reader of comments and decision logs (domain.jsonl): the same line-numbered errors for bytes that
    are not UTF-8, and a BOM and blank lines are fine."""
    path = tmp_path / "rules.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"id": "ok", "text": "a rule"}\n\n{"id": "b", "text": "caf\xe9"}\n')
    with pytest.raises(RulebertError, match=r"rules.jsonl: line 3: not valid UTF-8 \(byte 0xe9\)"):
        read_rules_jsonl(path)
    path.write_bytes(b'\xef\xbb\xbf{"id": "ok", "text": "a rule"}\n\n{"id": "b", "text": "caf\xc3\xa9"}\n')
    assert [r.text for r in read_rules_jsonl(path)] == ["a rule", "caf\u00e9"]
    with pytest.raises(RulebertError, match="none.jsonl: cannot read"):
        read_rules_jsonl(tmp_path / "none.jsonl")


def test_rules_from_competition_layout() -> None:
    frame = make_frame(20, seed=3, labelled=False)
    rules = rules_from_competition(frame)
    assert [r.text for r in rules] == list(dict.fromkeys(frame["rule"]))
    assert [r.id for r in rules] == ["no-advertising-spam-and", "no-legal-advice-do"]
    own = frame[frame["rule"] == rules[0].text]
    assert set(rules[0].positive_examples) <= set(own["positive_example_1"]) | set(own["positive_example_2"])
    assert rules[0].positive_examples and rules[0].negative_examples


# --- the store ---------------------------------------------------------------------------------------


def test_store_create_replace_list_delete(tmp_path: Path) -> None:
    store = RuleStore(tmp_path / "state" / "rules.sqlite3")
    rule = medical_rule()
    stored, created = store.put(rule)
    assert created and stored == rule and stored.updated > 0
    replaced, created = store.put(StoredRule("medical", "No drugs", ("a",), ("b",)))
    assert not created
    assert store.get("medical") == replaced
    store.put(StoredRule("alpha", "First", (), ()))
    assert [r.id for r in store.list()] == ["alpha", "medical"]
    assert RuleStore(tmp_path / "state" / "rules.sqlite3").get("medical").text == "No drugs"  # persisted
    assert store.delete("medical") and not store.delete("medical")
    assert store.get("medical") is None


def test_store_many_threads(tmp_path: Path) -> None:
    store = RuleStore(tmp_path / "rules.sqlite3")
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            for i in range(10):
                store.put(StoredRule(f"r{k}-{i}", f"rule {k} {i}", ("p",), ("n",)))
                store.list()
        except BaseException as err:  # collected: pytest does not see thread failures
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(store.list()) == 40


def test_store_refuses_a_file_that_is_not_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "rules.sqlite3"
    path.write_text("not a database, just text " * 100)
    with pytest.raises(RulebertError, match="not a usable rules database"):
        RuleStore(path)


# --- adaptation --------------------------------------------------------------------------------------


def test_adapt_writes_a_verifiable_model_that_knows_the_rule(model_dir: Path, tmp_path: Path) -> None:
    from rulebert.inference.predict import Scorer
    from rulebert.training.adapt import adapt_model

    before = Scorer(model_dir)
    assert before.mode(MEDICAL) == "zero-shot"
    steps: list[float] = []
    result = adapt_model(
        model_dir,
        [medical_rule()],
        tmp_path / "adapted",
        progress=False,
        on_progress=lambda f, m: steps.append(f),
    )
    out = result.output_dir
    record = verify_model_dir(out)
    assert record["data"]["adapted_from"]["model"] == model_dir.name
    assert record["data"]["adapted_from"]["weights_sha256"] == read_record(model_dir)["weights_sha256"]
    assert record["data"]["adapted_rules"][0]["id"] == "medical"
    assert MEDICAL in record["data"]["rules"]
    assert record["weights_sha256"] != read_record(model_dir)["weights_sha256"]  # it did train
    metrics = read_metrics(out)
    assert metrics["adapted"]["rules"] == ["medical"]
    assert metrics["calibration_inherited_from"] == model_dir.name  # 12 examples: nothing to hold out
    assert steps == sorted(steps) and steps[-1] == 1.0
    scorer = Scorer(out)
    assert scorer.mode(MEDICAL) == "trained"
    assert 0 <= float(scorer.score("take 200mg of sertraline", MEDICAL)[0]) <= 1
    assert not any(p.name.startswith(".adapting") for p in tmp_path.iterdir())  # no staging left behind


def test_adapt_refuses_bad_requests_before_any_work(model_dir: Path, tmp_path: Path) -> None:
    from rulebert.training.adapt import adapt_model

    one_sided = StoredRule("x", "No x", ("a", "b"), ())
    with pytest.raises(
        RulebertError, match="rule 'x': adapting needs at least one positive and one negative"
    ):
        adapt_model(model_dir, [one_sided], tmp_path / "out", progress=False)
    with pytest.raises(RulebertError, match="must differ from --model-dir"):
        adapt_model(model_dir, [medical_rule()], model_dir, progress=False)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(RulebertError, match="not empty"):
        adapt_model(model_dir, [medical_rule()], tmp_path / "full", progress=False)
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    (model_dir / "config.json").write_text((model_dir / "config.json").read_text() + " ")
    with pytest.raises(RulebertError, match="config.json"):
        adapt_model(model_dir, [medical_rule()], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rulebert.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_adapt_from_rules_jsonl_and_from_a_test_csv(model_dir: Path, tmp_path: Path) -> None:
    rules = write_rules(tmp_path / "rules.jsonl", [medical_rule()])
    done = run_cli(
        "adapt", "--model-dir", str(model_dir), "--rules", str(rules), "--output-dir", str(tmp_path / "a")
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rules"] == ["medical"]
    verify_model_dir(tmp_path / "a")

    test_csv = tmp_path / "test.csv"
    make_frame(10, seed=4, labelled=False).to_csv(test_csv, index=False)
    done = run_cli(
        "adapt", "--model-dir", str(model_dir), "--test", str(test_csv), "--output-dir", str(tmp_path / "b"),
        "--no-progress",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(read_record(tmp_path / "b")["data"]["adapted_rules"]) == 2

    again = run_cli(
        "adapt", "--model-dir", str(model_dir), "--rules", str(rules), "--output-dir", str(tmp_path / "a")
    )
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "not empty" in again.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "m", "text": "No m", "positive_examples": ["a"]}\n')
    done = run_cli(
        "adapt", "--model-dir", str(model_dir), "--rules", str(bad), "--output-dir", str(tmp_path / "c")
    )
    assert done.returncode == 2 and "rule 'm': adapting needs" in done.stderr
