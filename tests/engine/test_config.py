"""engine.config: _base_ inheritance, dotlist overrides, strict keys, saving."""
from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from resnet_detect import CONFIGS
from resnet_detect.detection import config as detection_config
from resnet_detect.engine.config import ConfigError, as_override, load_config, save_config

DEFAULTS = {
    "model": {"name": "resnet50", "options": {}},
    "solver": {"base_lr": 0.1, "steps": [30, 60], "epochs": 90},
    "data": {"root": "???", "size": 224},
}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def assert_refused(path: Path, cases: list[tuple[str, str]]) -> None:
    """Each (override, message pattern): loading `path` with the override raises ConfigError."""
    for override, expected in cases:
        with pytest.raises(ConfigError, match=expected):
            load_config(path, [override], defaults=DEFAULTS)


def test_base_inheritance_relative_to_including_file_and_list_order(tmp_path: Path) -> None:
    write(tmp_path / "common/a.yaml", "solver: {base_lr: 0.2, epochs: 10}\ndata: {root: /a}\n")
    write(tmp_path / "common/b.yaml", "_base_: a.yaml\nsolver: {epochs: 20}\n")
    write(tmp_path / "common/c.yaml", "solver: {steps: [5]}\ndata: {root: /c}\n")
    child = write(tmp_path / "exp/child.yaml",
                  "_base_: [../common/b.yaml, ../common/c.yaml]\nmodel: {name: resnet18}\n")
    cfg = load_config(child, defaults=DEFAULTS)
    assert cfg.model.name == "resnet18"          # child
    assert cfg.solver.base_lr == 0.2             # a, through b
    assert cfg.solver.epochs == 20               # b overrides a
    assert list(cfg.solver.steps) == [5]         # c, lists are replaced
    assert cfg.data.root == "/c"                 # the later base wins
    assert cfg.data.size == 224                  # defaults
    assert "_base_" not in cfg


def test_a_file_two_bases_inherit_is_merged_once(tmp_path: Path, caplog) -> None:
    """exp: [sched, data], both inheriting common: common was merged again after sched,
    undoing sched's values without a word (mmdetection refuses such bases; detectron2 has
    one base a file)."""
    write(tmp_path / "common.yaml", "solver: {base_lr: 0.5, epochs: 10}\ndata: {root: /c}\n")
    write(tmp_path / "sched.yaml", "_base_: common.yaml\nsolver: {base_lr: 0.01}\n")
    write(tmp_path / "data.yaml", "_base_: common.yaml\ndata: {size: 64}\n")
    exp = write(tmp_path / "exp.yaml", "_base_: [sched.yaml, data.yaml]\n")
    cfg = load_config(exp, defaults=DEFAULTS)
    assert (cfg.solver.base_lr, cfg.solver.epochs, cfg.data.size, cfg.data.root) == (
        0.01, 10, 64, "/c")
    # listed again after a base that inherits it: not merged again, and said where that
    # keeps values an earlier version replaced by its own
    again = write(tmp_path / "again.yaml", "_base_: [sched.yaml, common.yaml]\n")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert load_config(again, defaults=DEFAULTS).solver.base_lr == 0.01
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path.resolve() / 'common.yaml'} is a _base_ of {tmp_path.resolve() / 'again.yaml'} "
        f"and was merged before it (its first place): not merged again, so these keep the "
        f"values sched.yaml set since: solver.base_lr (list it first, or set them in "
        f"again.yaml, to have its values)"]
    # ??? in a file or an override makes a key mandatory again (a merge kept the base's)
    template = write(tmp_path / "template.yaml", "_base_: common.yaml\ndata:\n  root: ???\n")
    for path, extra in ((template, []), (exp, ["data.root=???"])):
        with pytest.raises(ConfigError, match="leaves mandatory keys unset: data.root"):
            load_config(path, extra, defaults=DEFAULTS)
    assert load_config(template, ["data.root=/mine"], defaults=DEFAULTS).data.root == "/mine"
    # an override given where the config belongs: said
    with pytest.raises(ConfigError, match=r"config file not found: .*train.seed=4 \(a key=value "
                                          r"override\? the config file comes first, then the "
                                          r"overrides\)"):
        load_config(tmp_path / "train.seed=4", defaults=DEFAULTS)
    # a base that is not there names the file whose _base_ names it
    write(tmp_path / "m.yaml", "_base_: gone.yaml\n")
    with pytest.raises(ConfigError, match=re.escape(
            f"config file not found: {tmp_path / 'gone.yaml'} (a _base_ of "
            f"{(tmp_path / 'm.yaml').resolve()})")):
        load_config(write(tmp_path / "top.yaml", "_base_: m.yaml\n"), defaults=DEFAULTS)
    # the README's repository paths, where the project is installed with pip: the installed
    # package's config named (its defaults travel in the wheel as resnet_detect/configs)
    packaged = CONFIGS / "synthetic/faster_rcnn_R_18_FPN.yaml"
    assert packaged.is_file()
    write(tmp_path / "mine.yaml", "_base_: ../configs/synthetic/faster_rcnn_R_18_FPN.yaml\n")
    for path in (tmp_path / "configs/synthetic/faster_rcnn_R_18_FPN.yaml", tmp_path / "mine.yaml"):
        with pytest.raises(ConfigError, match=r"config file not found: .*faster_rcnn_R_18_FPN"
                           r"\.yaml.*" + re.escape(f"; the installed package has it: {packaged} "
                                                    f"(`_base_: resnet_detect::synthetic/"
                                                    f"faster_rcnn_R_18_FPN.yaml` wherever it "
                                                    f"is installed)") + "$"):
            load_config(path, defaults=DEFAULTS)
    # which a config inherits as `resnet_detect::PATH` from any folder
    write(tmp_path / "mine.yaml", "_base_: resnet_detect::synthetic/faster_rcnn_R_18_FPN.yaml\n"
                                  "train: {max_iter: 7}\n")
    mine, packaged_cfg = (load_config(path) for path in (tmp_path / "mine.yaml", packaged))
    assert mine.train.max_iter == 7 and packaged_cfg.train.max_iter != 7
    for base, message in (("resnet_detect::../../x.yaml", "is outside the package's configs"),
                          ("mmdet::x.yaml", "resnet_detect:: is the one package prefix")):
        write(tmp_path / "other.yaml", f"_base_: {base}\n")
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(tmp_path / "other.yaml")
    # or names it as the config itself (a tool's CONFIG, Predictor's config)
    assert load_config("resnet_detect::synthetic/faster_rcnn_R_18_FPN.yaml") == packaged_cfg
    with pytest.raises(ConfigError, match=re.escape("'resnet_detect::../x.yaml' (the config) is "
                                                    "outside the package's configs folder")):
        load_config("resnet_detect::../x.yaml")
    mine.train.max_iter = packaged_cfg.train.max_iter
    assert mine == packaged_cfg
    with pytest.raises(ConfigError, match=r"config file not found: \S*configs.nope\.yaml$"):
        load_config(tmp_path / "configs/nope.yaml", defaults=DEFAULTS)  # none of that name


def test_an_empty_mapping_clears_an_open_section(tmp_path: Path) -> None:
    """`{}` (in a file or an override) left a base's lr multipliers in place without a word:
    a merge of nothing. In a section of free keys it now says "none"; in a section of fixed
    keys it changes nothing, as before."""
    base = write(tmp_path / "base.yaml", "model: {options: {a: 1, b: 2}}\ndata: {root: /r}\n")
    child = write(tmp_path / "child.yaml", "_base_: base.yaml\nmodel: {options: {}}\n")
    load = lambda path, *o: load_config(path, o, defaults=DEFAULTS,  # noqa: E731
                                        open_keys=("model.options",))
    assert load(base).model.options == {"a": 1, "b": 2}
    assert load(child).model.options == {}
    assert load(base, "model.options={}").model.options == {}
    assert load(base, "model.options={c: 3}").model.options == {"a": 1, "b": 2, "c": 3}
    assert load(child, "model.options.c=3").model.options == {"c": 3}
    assert load(base, "solver={}").solver == DEFAULTS["solver"]  # fixed keys: kept


def test_an_empty_mapping_for_a_section_of_set_keys_is_warned_of(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """mmdetection's `_delete_` habit, `solver: {}` to start a section afresh, kept every key
    without a word."""
    child = write(tmp_path / "child.yaml", "solver: {}\ndata: {root: /r}\n")
    with caplog.at_level(logging.WARNING):
        assert load_config(child, defaults=DEFAULTS).solver == DEFAULTS["solver"]
        load_config(child, ["model.options={}"], defaults=DEFAULTS,
                    open_keys=("model.options",))
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2 and all(w.startswith(f"{child}: solver: {{}} leaves a section of "
                                                 f"set keys as it was (only a section of free "
                                                 f"keys") for w in warned), warned


def test_each_load_reads_its_files_anew_and_returns_its_own_config(tmp_path: Path) -> None:
    """A file's parse is kept by its text: a later load of the same files gets its own copy
    (its _base_ still there, the first load's changes not), and a file rewritten between
    loads, even to the same length, is read again."""
    base = write(tmp_path / "base.yaml", "solver: {epochs: 10}\ndata: {root: /a}\n")
    child = write(tmp_path / "child.yaml", "_base_: base.yaml\nsolver: {base_lr: 0.2}\n")
    first = load_config(child, ["solver.steps=[1]"], defaults=DEFAULTS)
    first.solver.epochs = 99
    second = load_config(child, defaults=DEFAULTS)
    assert (second.solver.epochs, second.solver.base_lr, list(second.solver.steps),
            second.data.root) == (10, 0.2, [30, 60], "/a")
    write(base, "solver: {epochs: 20}\ndata: {root: /a}\n")
    assert load_config(child, defaults=DEFAULTS).solver.epochs == 20
    assert DEFAULTS["solver"] == {"base_lr": 0.1, "steps": [30, 60], "epochs": 90}


def test_overrides_apply_last_and_open_keys_accept_new_keys(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "data: {root: /x}\nsolver: {base_lr: 0.2}\n")
    cfg = load_config(path, ["solver.base_lr=0.05", "solver.steps=[1,2,3]",
                             "model.options.width=0.5"],
                      defaults=DEFAULTS, open_keys=["model.options"])
    assert cfg.solver.base_lr == 0.05
    assert list(cfg.solver.steps) == [1, 2, 3]
    assert cfg.model.options.width == 0.5


def test_unknown_yaml_key_names_key_and_file(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.yaml", "data: {root: /x}\nsolver: {base_lrr: 0.2}\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'solver\.base_lrr' in .*bad\.yaml"
                       r".*valid keys under 'solver': base_lr, epochs, steps"):
        load_config(path, defaults=DEFAULTS)


def test_a_value_that_is_not_a_number_where_the_default_is_one_is_named(
        tmp_path: Path) -> None:
    """Before, `train.batch_size=two` failed deep in training with int()'s message."""
    path = write(tmp_path / "c.yaml", "data: {root: /x, size: 160}\n")
    cfg = load_config(path, ["solver.base_lr=1", "solver.epochs=2.5", "solver.base_lr=1e-4"],
                      defaults=DEFAULTS)
    assert cfg.solver.base_lr == 1e-4 and cfg.solver.epochs == 2.5  # fractional epochs exist
    with pytest.raises(ConfigError, match=r"data.size must be a number, got null in override "
                                          r"'data.size=null'"):  # (TypeErrors in training)
        load_config(path, ["data.size=null"], defaults=DEFAULTS)
    assert_refused(path, [("solver.epochs=two", "solver.epochs must be a number, got 'two' in "
                           "override 'solver.epochs=two'"),
                          ("solver.base_lr=abc", "solver.base_lr must be a number, got 'abc'"),
                          ("solver.base_lr=true", "solver.base_lr must be a number"),
                          ("data.size=[640,800]", "data.size must be a number")])
    bad = write(tmp_path / "bad.yaml", "data: {root: /x, size: big}\n")
    with pytest.raises(ConfigError, match=r"data.size must be a number, got 'big' in "
                                          r".*bad\.yaml"):
        load_config(bad, defaults=DEFAULTS)


def test_values_of_the_wrong_kind_are_named_before_training(tmp_path: Path) -> None:
    """Each failed deep in training with a message naming no key (or went through silently):
    a section emptied in a file or replaced on the command line, a fraction for a whole number,
    a malformed list, a ${...} naming no key; a number for a string key became a number."""
    path = write(tmp_path / "c.yaml", "data: {root: /x}\n")
    assert_refused(path, [
        ("solver=null", r"solver is a section of keys, got None in override "
                        r"'solver=null'$"),
        ("solver=5", "solver is a section of keys, got 5"),
        ("data.size=160.5", r"data.size must be a whole number, got 160.5 in override"),
        ("solver.steps=5", r"solver.steps must be a list of numbers, got 5 in override"),
        ("solver.steps=[true]", r"solver.steps must be a list of numbers, got \[True\]"),
        ("solver.steps=[10,20.5]", "solver.steps must be a whole number"),
        ("solver.steps=[1, 2", r"cannot parse override 'solver.steps=\[1, 2' \(a list or "
                               r"mapping with spaces needs quotes: 'solver.steps=\[1, 2\]'\): "
                               r"while parsing"),
        ("solver.steps=[1,,2]", r"cannot parse override 'solver.steps=\[1,,2\]': "),  # no space
        ("data.root=/x/${nothing}", r"override 'data.root=/x/\$\{nothing\}': Interpolation "
                                    r"key 'nothing' not found full_key: data.root"),
        ("solver.epoch=3", r"unknown config key 'solver.epoch' in override 'solver.epoch=3' "
                           r"\(did you mean 'epochs'\?\)")])
    emptied = write(tmp_path / "emptied.yaml", "data: {root: /x}\nsolver:\n  # base_lr: 1\n")
    with pytest.raises(ConfigError, match=r"solver is a section of keys, got None in .*emptied"
                                          r".yaml \(a section left empty in a file: give it keys"):
        load_config(emptied, defaults=DEFAULTS)
    cfg = load_config(path, ["data.size=1e2", "data.root=0755", "model.name=1e3"],
                      defaults=DEFAULTS)
    assert cfg.data.size == 100 and cfg.data.root == "0755" and cfg.model.name == "1e3"
    assert isinstance(cfg.data.size, int)  # not 100.0: a whole-number key gets an int
    # paths as typed: YAML read "runs #2" as "runs" and a comment (the run went to the parent
    # folder) and "run: 2" as a mapping; quoted text is still YAML's
    for typed in ("/x ü/runs #2", "/tmp/run: 2", "a#b", "#run"):
        assert load_config(path, [f"data.root={typed}"], defaults=DEFAULTS).data.root == typed
    # keys whose default is null (data files, weights) too
    from resnet_detect.engine.tasks import load_task_config
    _, det = load_task_config(Path(__file__).resolve().parents[2] / "configs/detection/"
                              "base_faster_rcnn.yaml", ["data.val.ann_file=/data/v: 1/a.json",
                                                        "model.weights=/runs/e #3/m.pth"])
    assert (det.data.val.ann_file, det.model.weights) == ("/data/v: 1/a.json", "/runs/e #3/m.pth")
    _, det = load_task_config(Path(__file__).resolve().parents[2] / "configs/detection/"
                              "base_faster_rcnn.yaml", ["data.val.img_dir=0755",
                                                        "data.val.ann_file=1e3"])
    assert (det.data.val.img_dir, det.data.val.ann_file) == ("0755", "1e3")  # not 493, 1000.0
    # pretraining's train.max_iter, null by default, took no 2e4 ("got 20000.0")
    _, pre = load_task_config(Path(__file__).resolve().parents[2] / "configs/pretrain/"
                              "synthetic_resnet18.yaml",
                              ["train.max_iter=2e4", "train.epochs=null"])
    assert pre.train.max_iter == 20000 and isinstance(pre.train.max_iter, int)
    with pytest.raises(ConfigError, match=r"train.max_iter must be a whole number, got 2.5 in "
                                          r"override 'train.max_iter=2.5'"):
        load_task_config(Path(__file__).resolve().parents[2] / "configs/pretrain/"
                         "synthetic_resnet18.yaml", ["train.max_iter=2.5"])
    with pytest.raises(ConfigError, match=r"^override '=3' has no key before its '=': write "
                                          r"key=value$"):
        load_config(path, ["=3"], defaults=DEFAULTS)
    assert load_config(path, ["data.root='/a #b'"], defaults=DEFAULTS).data.root == "/a #b"
    with pytest.raises(ConfigError, match=r"data.size must be a number, got '100 #x' in "
                                          r"override 'data.size=100 #x'"):
        load_config(path, ["data.size=100 #x"], defaults=DEFAULTS)
    assert load_config(path, ["model.name=None"], defaults=DEFAULTS).model.name is None
    steps = load_config(path, ["solver.steps=[1e3]"], defaults=DEFAULTS).solver.steps
    assert list(steps) == [1000] and isinstance(steps[0], int)
    derived = write(tmp_path / "derived.yaml", "data:\n  root: /x\n  size: 96\nsolver:\n"
                    "  steps: ['${data.size}', 200]\n  base_lr: ???\n")
    cfg = load_config(derived, ["solver.base_lr=0.1"], defaults=DEFAULTS)
    assert list(cfg.solver.steps) == [96, 200]  # an interpolated element resolves later
    # ??? makes the key mandatory (a merge kept the default: a template's "set this" lost)
    with pytest.raises(ConfigError, match="leaves mandatory keys unset: solver.base_lr"):
        load_config(derived, defaults=DEFAULTS)
    named = write(tmp_path / "named.yaml", "data: {root: 2024}\n")
    assert load_config(named, defaults=DEFAULTS).data.root == "2024"


def test_a_switch_takes_true_or_false_only_unless_it_also_takes_a_name(tmp_path: Path) -> None:
    """A quoted "false" or a 0 where the default is false is refused: Python would take the
    string as true; YAML's yes/no/on/off are booleans. train.amp and train.compile also take a
    name (bf16, a torch.compile backend), checked where they are used."""
    defaults = {"model": {"mask_on": False}, "data": {"root": "/x"},
                "train": {"amp": False, "compile": False}}
    quoted = write(tmp_path / "quoted.yaml", 'model: {mask_on: "false"}\n')
    with pytest.raises(ConfigError, match=r"model.mask_on must be true or false, got 'false' "
                                          r"in .*quoted.yaml$"):
        load_config(quoted, defaults=defaults)
    yaml11 = write(tmp_path / "yaml11.yaml", "model: {mask_on: yes}\ndata:\n  root: ${train.amp}\n")
    for override in ("model.mask_on=0", "model.mask_on=[true]", "model.mask_on=None"):
        with pytest.raises(ConfigError, match=r"model.mask_on must be true or false, got .* in "
                                              rf"override '{re.escape(override)}'$"):
            load_config(yaml11, [override], defaults=defaults)
    cfg = load_config(yaml11, ["train.amp=bf16", "train.compile=inductor"], defaults=defaults)
    assert cfg.model.mask_on is True and cfg.train.amp == "bf16" and cfg.data.root == "bf16"
    assert load_config(yaml11, ["model.mask_on=false"], defaults=defaults).model.mask_on is False


def test_null_is_refused_where_a_number_is_due_unless_it_means_something(tmp_path: Path) -> None:
    """train.base_lr= (a script's unset variable) was a TypeError deep in training, as null
    was for 65 keys of the three tasks (a helper's sweep); the keys whose null means
    something (no cap, keep every checkpoint, the backbone's stride...) keep taking it."""
    from resnet_detect.detection.config import load_config as load_detection

    config = Path(__file__).resolve().parents[2] / "configs/synthetic/faster_rcnn_R_18_FPN.yaml"
    for override, wanted in (("train.base_lr=", "a number"),
                             ("train.log_period=null", "a number"),
                             ("train.lr_steps=null", "a list of numbers"),
                             ("model.pixel_mean=null", "a list of numbers"),
                             ("model.roi_heads.pooler_resolution=None", "a number")):
        key = override.split("=")[0]
        with pytest.raises(ConfigError, match=re.escape(
                f"{key} must be {wanted}, got null in override '{override}'")):
            load_detection(config, [override])
    # a list of feature names: a string was read letter by letter (['r', 'e', 's', '3', ...])
    for override, message in (
            ("model.backbone.out_features=res3,res4", "model.backbone.out_features must be a "
             "list of names, e.g. [res3, res4], got 'res3,res4' in override "
             "'model.backbone.out_features=res3,res4'"),
            ("model.rpn.in_features=null", "model.rpn.in_features must be a list of names, "
             "got null in override 'model.rpn.in_features=null'")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_detection(config, [override])
    assert list(load_detection(config, ["model.backbone.out_features=[res4,res5]"])
                .model.backbone.out_features) == ["res4", "res5"]
    file = write(tmp_path / "nulls.yaml", f"_base_: {config}\ntrain: {{base_lr: null}}\n")
    with pytest.raises(ConfigError, match=r"train.base_lr must be a number, got null in "
                                          r".*nulls.yaml$"):
        load_detection(file)
    cfg = load_detection(config, ["train.max_to_keep=null", "data.val.max_size=null",
                                  "train.max_iter=null", "train.epochs=1"])
    assert (cfg.train.max_to_keep, cfg.data.val.max_size, cfg.train.max_iter) == (None,) * 3


def test_a_value_from_the_environment_is_checked_once_resolved(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """${oc.env:V} with V=false is the text 'false', which trained a Mask R-CNN; oc.decode
    reads the variable as YAML."""
    defaults = {"model": {"mask_on": False}, "train": {"max_iter": 10}}
    monkeypatch.setenv("MASKS", "false")
    monkeypatch.setenv("STEPS", "5")
    text = write(tmp_path / "env.yaml", "model: {mask_on: '${oc.env:MASKS}'}\n")
    with pytest.raises(ConfigError, match=re.escape(
            f"model.mask_on must be true or false, got 'false' in config {text} once its ${{...}} "
            f"values are resolved (an environment variable is text: "
            f"${{oc.decode:${{oc.env:NAME}}}} reads it as YAML)")):
        load_config(text, defaults=defaults)
    with pytest.raises(ConfigError, match=re.escape(
            "train.max_iter must be a number, got '5' in override 'train.max_iter=${oc.env:STEPS}'"
            " once")):
        load_config(text, ["model.mask_on=true", "train.max_iter=${oc.env:STEPS}"],
                    defaults=defaults)
    # an unset variable in an override is the override's, not the file's
    with pytest.raises(ConfigError, match=re.escape(
            "override 'train.max_iter=${oc.env:UNSET_STEPS}': ")):
        load_config(text, ["train.max_iter=${oc.env:UNSET_STEPS}"], defaults=defaults)
    unset = write(tmp_path / "unset.yaml", "train: {max_iter: '${oc.env:UNSET_STEPS}'}\n")
    with pytest.raises(ConfigError, match=re.escape(f"config {unset}: ")):
        load_config(unset, defaults=defaults)
    decoded = write(tmp_path / "decoded.yaml", "model: {mask_on: '${oc.decode:${oc.env:MASKS}}'}"
                    "\ntrain: {max_iter: '${oc.decode:${oc.env:STEPS}}'}\n")
    cfg = load_config(decoded, defaults=defaults)
    assert cfg.model.mask_on is False and cfg.train.max_iter == 5


def test_the_detector_sizes_take_a_number_or_a_list() -> None:
    """data.train.min_size (drawn per image) and data.val.min_size (the largest tests) take
    either; `true` was taken as 1 and resized every image to 1 pixel."""
    config = Path(__file__).resolve().parents[2] / "configs/synthetic/faster_rcnn_R_18_FPN.yaml"
    cfg = detection_config.load_config(config, ["data.train.min_size=800.0",
                                                "data.val.min_size=[640,800]"])
    assert cfg.data.train.min_size == 800 and isinstance(cfg.data.train.min_size, int)
    assert detection_config.test_resize(cfg)[0] == 800
    either = "a number or a list of numbers, got"
    for override, expected in (("data.train.min_size=true", f"{either} True"),
                               ("data.val.min_size=[]", rf"{either} \[\]"),
                               ("data.train.min_size=[]", rf"{either} \[\]"),
                               ("data.val.max_size=[1333]", r"a number, got \[1333\]"),
                               ("train.max_iter=[100]", r"a number, got \[100\]"),
                               ("train.lr_steps=5", "a list of numbers, got 5"),
                               # yacs' tuple, as detectron2 users write it
                               ("data.train.min_size=(160, 192)", r"a number or a list of "
                                r"numbers, got '\(160, 192\)' in override .* \(a list is "
                                r"written \[160,192\] here\)$"),
                               ("train.lr_steps=(60,80)", r"a list of numbers, got '\(60,80\)' "
                                r".*\(a list is written \[60,80\] here\)$")):
        with pytest.raises(ConfigError, match=f"{override.split('=')[0]} must be {expected}"):
            detection_config.load_config(config, [override])


def test_unknown_key_in_base_file_names_the_base(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", "trainer: {x: 1}\n")
    path = write(tmp_path / "c.yaml", "_base_: base.yaml\ndata: {root: /x}\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'trainer' in .*base\.yaml"):
        load_config(path, defaults=DEFAULTS)


def test_unknown_override_key_names_the_override(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "data: {root: /x}\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'model\.depth' in override "
                                          r"'model\.depth=18'"):
        load_config(path, ["model.depth=18"], defaults=DEFAULTS, open_keys=["model.options"])
    with pytest.raises(ConfigError, match="must look like key=value"):
        load_config(path, ["model.name"], defaults=DEFAULTS)
    # one string for the list (detectron2's merge_from_list takes a list too): was "override
    # 'm' must look like key=value", from its first character
    with pytest.raises(ConfigError, match=r"overrides are a list of key=value strings, got the "
                                          r"string 'model.name=x': write \['model.name=x'\]"):
        load_config(path, "model.name=x", defaults=DEFAULTS)


def test_mandatory_missing_file_and_cycle_errors(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "model: {name: resnet18}\n")
    with pytest.raises(ConfigError, match="mandatory keys unset: data.root"):
        load_config(path, defaults=DEFAULTS)
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.yaml"):
        load_config(tmp_path / "nope.yaml", defaults=DEFAULTS)
    write(tmp_path / "x.yaml", "_base_: y.yaml\n")
    write(tmp_path / "y.yaml", "_base_: x.yaml\n")
    with pytest.raises(ConfigError, match="_base_ cycle"):
        load_config(tmp_path / "x.yaml")
    broken = write(tmp_path / "broken.yaml", "data: {root: /x}\nsolver: [1, 2\nmodel: {}\n")
    with pytest.raises(ConfigError) as refused:
        load_config(broken, defaults=DEFAULTS)
    assert str(refused.value).startswith(f"cannot parse config file {broken}: ")
    assert f'in "{broken}", line 2' in str(refused.value)  # YAML's own words name it too


def test_without_defaults_any_key_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "anything: {goes: 1}\n")
    assert load_config(path, ["anything.else=2"]).anything == {"goes": 1, "else": 2}


def test_save_config_writes_resolved_yaml(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml",
                 "data: {root: /x}\nmodel: {name: '${data.root}/net'}\n")
    cfg = load_config(path, defaults=DEFAULTS)
    save_config(cfg, tmp_path / "out/config.yaml")
    saved = OmegaConf.load(tmp_path / "out/config.yaml")
    assert saved.model.name == "/x/net"
    assert saved.solver.steps == [30, 60]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["config.yaml"]
    # The saved file is itself a valid config for the same schema.
    assert load_config(tmp_path / "out/config.yaml", defaults=DEFAULTS) == saved


def test_a_deprecated_key_beside_its_new_name_is_refused(tmp_path: Path) -> None:
    """A file with solver.base_lr (an old pretraining key) and train.base_lr trained at the
    deprecated one's value without a word."""
    defaults = {"train": {"base_lr": 0.1, "epochs": 90}}
    renamed = {"solver.base_lr": "train.base_lr", "solver.epochs": "train.epochs"}
    both = write(tmp_path / "both.yaml", "solver: {base_lr: 0.5}\ntrain: {base_lr: 0.2}\n")
    with pytest.raises(ConfigError, match=r"both.yaml sets both 'solver.base_lr' \(0.5, the "
                                          r"deprecated name\) and 'train.base_lr' \(0.2\): keep "
                                          r"'train.base_lr' alone"):
        load_config(both, defaults=defaults, renamed=renamed)
    same = write(tmp_path / "same.yaml", "solver: {base_lr: 0.2, epochs: 5}\n"
                                         "train: {base_lr: 0.2}\n")
    cfg = load_config(same, ["solver.epochs=7"], defaults=defaults, renamed=renamed)
    assert (cfg.train.base_lr, cfg.train.epochs) == (0.2, 7)


def test_deprecated_keys_are_one_warning_once_per_file(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """A pre-refactor run's config.yaml printed a line per key, and again at each read (30
    lines for one --resume)."""
    defaults = {"train": {"base_lr": 0.1, "epochs": 90}}
    renamed = {"solver.base_lr": "train.base_lr", "solver.epochs": "train.epochs"}
    old = write(tmp_path / "old.yaml", "solver: {base_lr: 0.5, epochs: 5}\n")
    for _ in range(2):
        assert load_config(old, defaults=defaults, renamed=renamed).train.epochs == 5
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        f"{old}: deprecated config keys, read under their new names: solver.base_lr -> "
        f"train.base_lr, solver.epochs -> train.epochs"]


def test_a_weights_file_given_for_a_config_is_said_to_be_one(tmp_path: Path) -> None:
    """Predictor("model_final.pth") (weights as the first argument, where the config goes)
    failed with "'utf-8' codec can't decode byte 0x80"."""
    for name in ("model_final.pth", "model.ONNX"):
        weights = tmp_path / name
        weights.write_bytes(b"PK\x03\x04\x80 not text")
        with pytest.raises(ConfigError, match=f"{weights} is a weights file, not a config: pass "
                                              f"it as the weights"):
            load_config(weights)


def test_a_python_config_is_said_to_be_one(tmp_path: Path) -> None:
    """mmdetection's `_base_ = [...]` file was read as YAML: one key, the whole text, and then
    "has no `task` key; inherit a base config" (a detectron2 LazyConfig, "must hold a mapping"
    or a parse error): the tools here read YAML configs."""
    for text in ("_base_ = ['../_base_/models/faster-rcnn_r50_fpn.py']\n"
                 "model = dict(roi_head=dict(bbox_head=dict(num_classes=3)))\n",
                 "from detectron2.config import LazyCall as L\nmodel = L(GeneralizedRCNN)()\n"):
        config = write(tmp_path / "faster_rcnn.py", text)
        with pytest.raises(ConfigError, match="faster_rcnn.py is a Python config .mmdetection's"
                                              ".*the configs here are YAML files"):
            load_config(config)


def test_a_data_file_given_as_the_config_is_named_as_such(tmp_path: Path) -> None:
    coco = write(tmp_path / "instances_val.json",
                 '{"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}')
    with pytest.raises(ConfigError, match="instances_val.json is a COCO-format annotation file"
                                          ".*data.train.ann_file="):
        load_config(coco)
    results = write(tmp_path / "detections.json", '[{"image_id": 1, "score": 0.5}]')
    with pytest.raises(ConfigError, match="top level .a list: a detections/results file"):
        load_config(results)
    huge = tmp_path / "big.yaml"
    with open(huge, "wb") as f:  # sparse: a large file of zeros is not written out
        f.truncate(64 << 20)
    with pytest.raises(ConfigError, match="big.yaml is 64 MiB: not a config"):
        load_config(huge)
    binary = write(tmp_path / "odd.yaml", "task: detection\n\0\0")
    with pytest.raises(ConfigError, match="odd.yaml is not a text file .it holds NUL bytes"):
        load_config(binary)
    scalar = write(tmp_path / "scalar.yaml", "42\n")  # (OmegaConf's "Invalid loaded object")
    with pytest.raises(ConfigError, match=r"^config file .*scalar.yaml must hold a mapping at "
                                          r"the top level \(it holds a single value\)$"):
        load_config(scalar)


def test_an_override_in_a_message_is_one_shell_word_that_loads_back(tmp_path: Path) -> None:
    assert as_override([100, 100]) == "[100,100]"
    assert as_override((0.5, [1, 2])) == "[0.5,[1,2]]"
    assert as_override(OmegaConf.create({"a": [640, 800]}).a) == "[640,800]"
    assert as_override([True, None]) == "[true,null]" and as_override(None) == "null"
    assert as_override(False) == "false" and as_override(3) == "3" and as_override([]) == "[]"
    assert OmegaConf.from_dotlist([f"a={as_override([[1, 2], 3.5])}"]).a == [[1, 2], 3.5]



def test_a_training_from_scratch_normalised_on_a_0_to_1_scale_is_refused(tmp_path) -> None:
    """torchvision's Normalize values trained from scratch without a word (inputs of about
    +-1000); weights trained with them keep loading (their values are recorded)."""
    from resnet_detect import detection, segmentation
    from resnet_detect.engine.train_settings import check_training_config
    from resnet_detect.engine.tasks import load_task_config, task_module

    root = Path(__file__).resolve().parents[2] / "configs/synthetic"
    unit = ["model.pixel_mean=[0.5,0.5,0.5]", "model.pixel_std=[0.5,0.5,0.5]",
            "model.backbone.weights=null", "model.num_classes=3",
            f"train.output_dir={tmp_path}/out"]
    for config, package in (("faster_rcnn_R_18_FPN.yaml", detection),
                            ("deeplabv3_R_18_os16.yaml", segmentation)):
        name, cfg = load_task_config(root / config, unit)
        with pytest.raises(ConfigError, match=r"^model.pixel_mean \[0.5,0.5,0.5\] and "
                                              r"model.pixel_std \[0.5,0.5,0.5\] are on a 0..1 "
                                              r"scale"):
            check_training_config(task_module(name).TASK(), cfg)
        package.build_model(cfg)  # (what loads weights trained so)
        # raw pixels (mean 0, std 1) are no such mistake, nor values weights bring
        for other in (["model.pixel_mean=[0,0,0]", "model.pixel_std=[1,1,1]"],
                      ["model.backbone.weights=w.pth"]):
            name, cfg = load_task_config(root / config, [*unit, *other])
            check_training_config(task_module(name).TASK(), cfg)


def test_a_run_config_with_lr_multipliers_loads_for_inference(tmp_path: Path) -> None:
    """The detection Predictor's reader (and tools/eval.py's analyses, score_results) refused
    the config.yaml of a run trained with train.lr_multipliers ("unknown config key
    'train.lr_multipliers.backbone'"), and a checkpoint's recorded config with them."""
    from resnet_detect.engine.tasks import load_task_config
    config = Path(__file__).resolve().parents[2] / "configs/synthetic/faster_rcnn_R_18_FPN.yaml"
    _, cfg = load_task_config(config, ["train.lr_multipliers.backbone=0.1"])
    save_config(cfg, tmp_path / "config.yaml")
    assert detection_config.load_config(tmp_path / "config.yaml").train.lr_multipliers == {
        "backbone": 0.1}
    assert detection_config.config_from_mapping(
        OmegaConf.to_container(cfg)).train.lr_multipliers == {"backbone": 0.1}


def test_a_tab_in_a_config_is_named_as_the_cause(tmp_path: Path) -> None:
    """PyYAML's "found character that cannot start any token" never said "tab"."""
    tabbed = write(tmp_path / "tabbed.yaml", "solver:\n\tbase_lr: 0.2\ndata: {root: /r}\n")
    with pytest.raises(ConfigError, match=r"(?s)cannot parse config file .*tabbed.yaml: .*line 2, "
                                          r"column 1.*; the file holds tabs: YAML indents with "
                                          r"spaces$"):
        load_config(tabbed, defaults=DEFAULTS)


def test_a_home_folder_in_a_path_override_is_expanded(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The shell expands no ~ after "=": `train.output_dir=~/runs` made a folder named "~"
    in the working folder (detectron2's and mmdetection's too)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    base = write(tmp_path / "base.yaml", "data: {root: /r}\n")
    cfg = load_config(base, ["data.root=~/imagenet", "model.name=~x"], defaults=DEFAULTS)
    assert cfg.data.root == str(tmp_path / "home/imagenet")
    assert cfg.model.name == "~x"  # not a path's key


def test_detectron2_sections_in_a_config_file_are_translated(tmp_path: Path) -> None:
    """SOLVER: {BASE_LR: ...} in a file was "unknown config key 'SOLVER'" alone (an override
    SOLVER.BASE_LR=... was translated)."""
    base = CONFIGS / "synthetic/faster_rcnn_R_18_FPN.yaml"
    config = write(tmp_path / "d2.yaml",
                   f"_base_: {base}\nSOLVER:\n  BASE_LR: 0.01\n  MAX_ITER: 100\n  FOO: 1\n")
    with pytest.raises(ConfigError) as refused:
        load_config(config, defaults=detection_config.defaults())
    assert str(refused.value).endswith(
        "; detectron2's upper-case keys are not read here, the keys are lower-case: "
        "SOLVER.BASE_LR is train.base_lr, SOLVER.MAX_ITER is train.max_iter (README, 'Coming "
        "from detectron2 or mmdetection')")
    # (with what its value means here: the override's caveats)
    write(config, f"_base_: {base}\nMODEL:\n  PIXEL_MEAN: [103.53, 116.28, 123.675]\n")
    with pytest.raises(ConfigError, match=r"MODEL.PIXEL_MEAN is model.pixel_mean \(in RGB order: "
                                          r"detectron2's is BGR, reverse it\)"):
        load_config(config, defaults=detection_config.defaults())
    # what is not offered is said too (it was left out of the list without a word)
    write(config, f"_base_: {base}\nMODEL:\n  ROI_MASK_HEAD:\n    CLS_AGNOSTIC_MASK: true\n"
                  f"    POOLER_RESOLUTION: 7\n")
    with pytest.raises(ConfigError, match=r"lower-case: MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK: "
                                          r"class-agnostic masks are not offered here .*, "
                                          r"MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION is "
                                          r"model.roi_heads.mask_pooler_resolution \("):
        load_config(config, defaults=detection_config.defaults())
