# Two commands: `make demo` (the quickstart) and `make test`. Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= datasets/synthetic
PRETRAIN := output/pretrain/synthetic_resnet18
DET_CFG := configs/synthetic/faster_rcnn_R_18_FPN.yaml
DET_OUT := output/synthetic/faster_rcnn_R_18_FPN
DEMO_IMAGES := $(addprefix $(DATA)/images/val/,000000.jpg 000001.jpg 000002.jpg 000003.jpg)

.PHONY: install test demo clean

$(VENV)/.installed: setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

test: install
	$(VENV)/bin/pytest

$(DATA)/.done: tools/make_synthetic.py detection/synthetic.py detection/synthetic_shapes.py | install
	$(PY) tools/make_synthetic.py --out $(DATA) --seed 0 --overwrite
	touch $@

# synthetic data -> pretrain the ResNet-18 backbone (prints top-1/top-5) -> train the
# Faster R-CNN quickstart on it (prints box AP on the validation split) -> demo pictures
demo: install $(DATA)/.done
	$(PY) tools/pretrain.py configs/pretrain/synthetic_resnet18.yaml
	$(PY) tools/train.py $(DET_CFG)
	$(PY) tools/demo.py $(DET_CFG) --weights $(DET_OUT)/model_final.pth \
	    --input $(DEMO_IMAGES) --output output/demo

clean:
	rm -rf output $(DATA)
