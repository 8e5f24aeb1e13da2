import pytest
from transformers import AutoTokenizer

from rulebert.domain.text import encode_rows, first_segment
from rulebert.model.backbones import default_checkpoint

RULE = "No legal advice: do not offer or request legal advice."
LONG_BODY = " ".join(["lawyer contract question"] * 200)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(default_checkpoint())


def decoded(tokenizer, features):
    return tokenizer.decode(features["input_ids"], skip_special_tokens=False)


def test_pair_truncates_only_the_comment(tokenizer):
    [features] = encode_rows(tokenizer, [RULE], [LONG_BODY], ["legaladvice"], max_length=64)
    assert len(features["input_ids"]) == 64
    text = decoded(tokenizer, features)
    assert text.startswith(
        "[CLS] " + tokenizer.decode(tokenizer(RULE, add_special_tokens=False)["input_ids"])
    )
    assert "r / legaladvice" not in text  # subreddit is opt-in for the pair form
    assert set(features["token_type_ids"]) == {0, 1}


def test_pair_with_subreddit(tokenizer):
    [features] = encode_rows(tokenizer, [RULE], ["hi"], ["legaladvice"], include_subreddit=True)
    assert "r / legaladvice [SEP] hi [SEP]" in decoded(tokenizer, features)
    assert first_segment(RULE, "", True) == RULE


def test_template_keeps_the_rule_and_cuts_the_comment(tokenizer):
    [features] = encode_rows(
        tokenizer, [RULE], [LONG_BODY], ["legaladvice"], input_format="template", max_length=64
    )
    assert len(features["input_ids"]) <= 64
    text = decoded(tokenizer, features)
    assert text.startswith("[CLS] r / legaladvice rule : no legal advice")
    assert text.endswith("[SEP]") and "lawyer" in text


def test_short_rows_are_not_padded(tokenizer):
    features = encode_rows(tokenizer, [RULE, RULE], ["hi", LONG_BODY], max_length=128)
    assert len(features[0]["input_ids"]) < 30 and len(features[1]["input_ids"]) == 128


def test_a_rule_longer_than_max_length_leaves_room_for_the_comment(tokenizer):
    [features] = encode_rows(tokenizer, [LONG_BODY], ["the comment"], max_length=32)
    assert len(features["input_ids"]) <= 32
    assert decoded(tokenizer, features).endswith("the comment [SEP]")


def test_unknown_format(tokenizer):
    with pytest.raises(ValueError, match="unknown input_format"):
        encode_rows(tokenizer, [RULE], ["x"], input_format="prose")
