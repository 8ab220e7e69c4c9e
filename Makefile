# `make demo` (the quickstart) and `make test`; `make demo-seg` (DeepLabV3 and Mask R-CNN
# quickstarts, README "More"). All create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= datasets/synthetic
PRETRAIN := output/pretrain/synthetic_resnet18
DET_CFG := configs/synthetic/faster_rcnn_R_18_FPN.yaml
DET_OUT := output/synthetic/faster_rcnn_R_18_FPN
SEG_CFG := configs/synthetic/deeplabv3plus_R_18_os16.yaml
SEG_OUT := output/synthetic/deeplabv3plus_R_18_os16
MASK_CFG := configs/synthetic/mask_rcnn_R_18_FPN.yaml
MASK_OUT := output/synthetic/mask_rcnn_R_18_FPN
DEMO_IMAGES := $(addprefix $(DATA)/images/val/,000000.jpg 000001.jpg 000002.jpg 000003.jpg)

.PHONY: install test demo demo-seg clean

# pip would compile every installed file (torch's thousands) on one core; instead Python
# compiles what each tool imports on first use and keeps it, even where the environment says
# PYTHONDONTWRITEBYTECODE (without the cache every tool's start would recompile its imports)
unexport PYTHONDONTWRITEBYTECODE

$(VENV)/.installed: setup.cfg pyproject.toml tools/install.py
	python3 tools/install.py $(VENV)
	touch $@

install: $(VENV)/.installed

# two test processes, whole files each (module fixtures are built once): most tests run one
# thread of small ops (tests/conftest.py), so two processes use both cores of a 2-core box
test: install
	$(VENV)/bin/pytest -n 2 --dist loadfile

$(DATA)/.done: tools/make_synthetic.py resnet_detect/engine/data/synthetic.py resnet_detect/engine/data/synthetic_shapes.py | install
	$(PY) tools/make_synthetic.py --output $(DATA) --seed 0 --overwrite
	touch $@

# the quickstart backbone: ResNet-18 pretrained on the synthetic crops (prints top-1/top-5);
# made once and shared by both demos
$(PRETRAIN)/backbone_final.pth: configs/pretrain/synthetic_resnet18.yaml $(DATA)/.done | install
	$(PY) tools/pretrain.py configs/pretrain/synthetic_resnet18.yaml

# synthetic data -> pretrained backbone -> train the Faster R-CNN quickstart on it (prints
# box AP on the validation split) -> demo pictures
demo: install $(DATA)/.done $(PRETRAIN)/backbone_final.pth
	$(PY) tools/train.py $(DET_CFG)
	$(PY) tools/demo.py $(DET_CFG) --weights $(DET_OUT)/model_final.pth \
	    --input $(DEMO_IMAGES) --output output/demo

# the same backbone -> DeepLabV3+ quickstart (prints mIoU) -> Mask R-CNN quickstart (prints
# box and mask AP) -> pictures of both in output/demo-seg/
demo-seg: install $(DATA)/.done $(PRETRAIN)/backbone_final.pth
	$(PY) tools/train.py $(SEG_CFG)
	$(PY) tools/demo.py $(SEG_CFG) --weights $(SEG_OUT)/model_final.pth \
	    --input $(DEMO_IMAGES) --output output/demo-seg/deeplabv3plus
	$(PY) tools/train.py $(MASK_CFG)
	$(PY) tools/demo.py $(MASK_CFG) --weights $(MASK_OUT)/model_final.pth \
	    --input $(DEMO_IMAGES) --output output/demo-seg/mask_rcnn

clean:
	rm -rf output $(DATA)
