# Two entry points: `make pipeline` (the main job on mnist-5k) and `make test`.
# Each creates the virtual environment and installs the package on first use.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
OUTPUT_DIR ?= outputs/pipeline

.PHONY: install pipeline test test-slow clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip
	$(VENV)/bin/pip install -e '.[test,tensorboard]'
	touch $@

install: $(VENV)/.installed

pipeline: $(VENV)/.installed
	$(OFFLINE) $(PYTHON) scripts/run_pipeline.py --output_dir $(OUTPUT_DIR)

test: $(VENV)/.installed
	$(OFFLINE) $(PYTHON) -m pytest -q

test-slow: $(VENV)/.installed
	$(OFFLINE) $(PYTHON) -m pytest -q -m slow

clean:
	rm -rf outputs .pytest_cache
