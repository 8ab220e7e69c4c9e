# Two commands: `make demo` (the quickstart) and `make test`. Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= datasets/synthetic

.PHONY: install test demo clean

$(VENV)/.installed: setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

test: install
	$(VENV)/bin/pytest

$(DATA)/.done: tools/make_synthetic.py | install
	$(PY) tools/make_synthetic.py --out $(DATA) --seed 0
	touch $@

demo: install $(DATA)/.done
	$(PY) tools/pretrain.py configs/pretrain/synthetic_resnet18.yaml

clean:
	rm -rf output $(DATA)
