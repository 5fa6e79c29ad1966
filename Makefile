# One virtualenv, built from scratch when pyproject.toml changes.
# llama-cpp-python has no wheel on PyPI: pip builds it (about 5 minutes on 2 cores, cached by
# pip afterwards). GGML_NATIVE=OFF: a native build segfaults on the CPUs this project targets.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_FLAGS ?= --quiet --disable-pip-version-check
export CMAKE_ARGS := -DGGML_NATIVE=OFF
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: install demo test test-fast check bench

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) --upgrade pip
	$(PY) -m pip install $(PIP_FLAGS) -e ".[training,postgres,test]"
	touch $@

install: $(VENV)/.installed

demo: install  ## the main job: fine-tune SmolLM2 on the sample dataset, locally
	$(VENV)/bin/lmft run examples/pirate_sft.yaml

test: install  ## every test, the slow end-to-end ones included
	$(PY) -m pytest -q --durations=25

test-fast: install
	$(PY) -m pytest -q -m "not slow"

check: install  ## lint, format check and type check (mypy, configured in pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
