# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
DATA   ?= ../shared/data/jigsaw-agile-community-rules
OUT    ?= runs/competition
RUN_ARGS ?=

.PHONY: run test lint bench venv clean

# The venv is rebuilt when pyproject.toml changes. torch==2.13.0 is pinned there: pip takes the CPU
# build from the local wheel folder instead of pulling a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

run: venv
	$(VENV)/bin/rulebert run --data-dir $(DATA) --output-dir $(OUT) --overwrite $(RUN_ARGS)
	@echo "submission: $(OUT)/submission.csv   report: $(OUT)/report.md"

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

clean:
	rm -rf $(VENV) runs .pytest_cache
