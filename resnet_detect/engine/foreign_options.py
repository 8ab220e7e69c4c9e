"""detectron2's, mmdetection's and torchvision's references' spellings of options and config
keys, named with this project's in the tools' errors (README, "Coming from detectron2 or
mmdetection", has the whole table)."""
from __future__ import annotations

from collections.abc import Sequence

README = "README, 'Coming from detectron2 or mmdetection'"

DETECTRON2_KEYS = {
    "MODEL.WEIGHTS": "model.weights", "MODEL.DEVICE": "train.device",
    "MODEL.MASK_ON": "model.mask_on", "MODEL.ROI_HEADS.NUM_CLASSES": "model.num_classes",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST": "model.roi_heads.score_thresh",
    "MODEL.BACKBONE.FREEZE_AT": "model.backbone.freeze_at",
    "SOLVER.IMS_PER_BATCH": "train.batch_size", "SOLVER.BASE_LR": "train.base_lr",
    "SOLVER.MAX_ITER": "train.max_iter", "SOLVER.STEPS": "train.lr_steps",
    "SOLVER.GAMMA": "train.gamma", "SOLVER.WARMUP_ITERS": "train.warmup_iters",
    "SOLVER.CHECKPOINT_PERIOD": "train.checkpoint_period", "SOLVER.AMP.ENABLED": "train.amp",
    "TEST.EVAL_PERIOD": "train.eval_period", "OUTPUT_DIR": "train.output_dir",
    "SEED": "train.seed", "DATALOADER.NUM_WORKERS": "data.num_workers",
    "INPUT.MIN_SIZE_TRAIN": "data.train.min_size", "INPUT.MAX_SIZE_TRAIN": "data.train.max_size",
    "INPUT.MIN_SIZE_TEST": "data.val.min_size", "INPUT.MAX_SIZE_TEST": "data.val.max_size",
    "SOLVER.WARMUP_FACTOR": "train.warmup_factor",
    "SOLVER.WEIGHT_DECAY": "train.weight_decay", "SOLVER.MOMENTUM": "train.momentum",
    "SOLVER.NESTEROV": "train.nesterov", "TEST.AUG.ENABLED": "test.min_sizes",
    "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": "train.clip_grad_norm",
    "SOLVER.CLIP_GRADIENTS.ENABLED": "train.clip_grad_norm",
    "MODEL.ROI_HEADS.NMS_THRESH_TEST": "model.roi_heads.nms_thresh",
    "TEST.DETECTIONS_PER_IMAGE": "model.roi_heads.detections_per_image",
    "MODEL.RESNETS.NORM": "model.backbone.norm",
    "MODEL.RESNETS.STRIDE_IN_1X1": "model.backbone.stride_in_1x1",
    "MODEL.RESNETS.DEPTH": "model.backbone.name", "MODEL.PIXEL_MEAN": "model.pixel_mean",
    "MODEL.PIXEL_STD": "model.pixel_std", "DATASETS.TRAIN": "data.train.ann_file",
    "DATASETS.TEST": "data.val.ann_file",
    "DATALOADER.SAMPLER_TRAIN": "data.train.repeat_threshold",
    "DATALOADER.REPEAT_THRESHOLD": "data.train.repeat_threshold",
    "TEST.AUG.MIN_SIZES": "test.min_sizes", "TEST.AUG.MAX_SIZE": "test.max_size",
    "TEST.AUG.FLIP": "test.flip", "INPUT.MASK_FORMAT": "data.train.mask_format",
    "MODEL.ROI_MASK_HEAD.NUM_CONV": "model.roi_heads.mask_conv_dims",
    "MODEL.ROI_MASK_HEAD.CONV_DIM": "model.roi_heads.mask_conv_dims",
    "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION": "model.roi_heads.mask_pooler_resolution",
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION": "model.roi_heads.pooler_resolution",
    **{f"MODEL.{head}.POOLER_SAMPLING_RATIO": "model.roi_heads.pooler_sampling_ratio"
       for head in ("ROI_BOX_HEAD", "ROI_MASK_HEAD")},
    **{f"MODEL.{head}.POOLER_TYPE": "model.roi_heads.pooler_aligned"
       for head in ("ROI_BOX_HEAD", "ROI_MASK_HEAD")},
}
# detectron2's keys of what is not offered here
DETECTRON2_ABSENT = {
    "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK": "class-agnostic masks are not offered here (one "
                                             "mask per class, detectron2's default)",
}
# mmdetection's mask head, under its roi_head, and as a user following the hint writes it
MASK_HEAD = ("its mask_head num_convs and conv_out_channels are model.roi_heads.mask_conv_dims="
             "[256, 256, 256, 256] (a width per convolution), its loss_mask loss_weight "
             "model.roi_heads.mask_loss_weight, its mask_roi_extractor output_size "
             "model.roi_heads.mask_pooler_resolution; class-agnostic masks are not offered")


LOSS_OPTIONS = ("the loss is the cross-entropy summed over the scored pixels over their count "
                "(mmsegmentation's avg_non_ignore=True); model.class_weight=[w_0, ...] weighs "
                "the classes in both heads; no other loss (focal, dice, OHEM) here")
PREPROCESSOR = ("mmdetection's data_preprocessor mean and std are model.pixel_mean and "
                "model.pixel_std here (RGB)")
# lower-case keys of other projects' configs that users carry over: (what they are here, a
# key beside them that this task's configs have where the hint applies)
OTHER_KEYS = {
    "test.mode": ("mmsegmentation's test_cfg mode='slide' is test.window=[h, w] with "
                  "test.stride=[h, w] here (mode='whole': test.window=null)", "window"),
    "test.crop_size": ("mmsegmentation's test_cfg crop_size is test.window=[h, w] here",
                       "window"),
    # mmsegmentation's (their keys at the top level of its configs)
    "crop_size": ("mmsegmentation's crop_size is data.train.crop_size=[h, w] here "
                  "(segmentation configs)", "data"),
    "reduce_zero_label": ("mmsegmentation's reduce_zero_label is data.reduce_zero_label here "
                          "(segmentation configs)", "data"),
    "test_cfg": ("mmsegmentation's and mmdetection's test_cfg (the test loop) is no key here; "
                 "their model.test_cfg is the test section (segmentation's sliding window: "
                 "test.window, test.stride) and detection's model.roi_heads.score_thresh, "
                 "nms_thresh", "test"),
    "model.test_cfg": [("mmsegmentation's test_cfg mode='slide' crop_size stride is "
                        "test.window=[h, w] test.stride=[h, w] here", "head"),
                       ("mmdetection's test_cfg rcnn score_thr, nms iou_threshold, "
                        "max_per_img and mask_thr_binary are model.roi_heads.score_thresh, "
                        "nms_thresh, detections_per_image and mask_threshold here",
                        "roi_heads")],
    "model.decode_head": ("mmsegmentation's decode_head is model.head here (name: deeplabv3, "
                          "deeplabv3plus or fcn), its num_classes model.num_classes, its "
                          "loss_decode class_weight model.class_weight", "head"),
    "optim_wrapper": ("mmsegmentation's and mmdetection's optim_wrapper optimizer is "
                      "train.base_lr, train.momentum, train.weight_decay here (its "
                      "accumulative_counts train.accumulation_steps, clip_grad "
                      "train.clip_grad_norm)", "train"),
    "train_dataloader": ("mmdetection's train_dataloader batch_size (per GPU) is "
                         "train.batch_size (all processes) here, num_workers data.num_workers, "
                         "dataset ann_file and data_prefix data.train.ann_file and img_dir",
                         "train"),
    "val_dataloader": ("mmdetection's val_dataloader dataset is data.val.ann_file and img_dir "
                       "here", "train"),
    "randomness": ("mmdetection's randomness seed is train.seed here", "train"),
    "custom_hooks": ("mmdetection's custom_hooks are train.hooks=[{type: module.Class}] here",
                     "train"),
    # (a classifier's: data.pixel_mean; the detectors' and segmenters' have a test section)
    "data_preprocessor": [(PREPROCESSOR, "test"),
                          ("mmpretrain's data_preprocessor mean and std are data.pixel_mean "
                           "and data.pixel_std here (RGB)", "train")],
    "model.data_preprocessor": (PREPROCESSOR, "pixel_mean"),
    "model.backbone.init_cfg": ("mmdetection's init_cfg checkpoint is "
                                "model.backbone.weights=PATH here", "weights"),
    "auto_scale_lr": ("mmdetection's auto_scale_lr is no key here: set train.base_lr for your "
                      "train.batch_size (the linear rule: twice the batch, twice the rate)",
                      "train"),
    **{key: (f"mmdetection 2.x's {key} is the train section here (lr_config: train.lr_steps "
             f"or lr_step_epochs, train.warmup_iters; evaluation interval: train.eval_period; "
             f"checkpoint_config interval: train.checkpoint_period; runner max_epochs and "
             f"total_epochs: train.epochs)", "train")
       for key in ("lr_config", "evaluation", "checkpoint_config", "runner", "total_epochs")},
    "default_hooks": ("mmdetection's default_hooks checkpoint interval is "
                      "train.checkpoint_period_epochs here (train.checkpoint_period in "
                      "iterations), logger interval train.log_period", "train"),
    "param_scheduler": ("mmsegmentation's and mmdetection's param_scheduler is train.lr_decay "
                        "(poly, step, cosine), train.lr_power, train.warmup_iters here", "train"),
    "train_cfg": ("mmsegmentation's and mmdetection's train_cfg max_iters is train.max_iter "
                  "(max_epochs: train.epochs), val_interval train.eval_period here "
                  "(train.eval_period_epochs in epochs)", "train"),
    # mmsegmentation's loss options under a head
    **{f"model.{head}.{key}": (LOSS_OPTIONS, "loss_weight")
       for head in ("head", "aux_head")
       for key in ("class_weight", "loss_decode", "loss", "avg_non_ignore", "sampler")},
    "model.class_weights": ("per-class weights of the loss are model.class_weight=[w_0, ...] "
                            "here (one per class)", "ignore_index"),
    # mmdetection's top-level keys
    "load_from": ("mmdetection's load_from is model.weights=PATH here", "train"),
    "resume": ("mmdetection's resume=True is tools/train.py's --resume flag here", "train"),
    "work_dir": ("mmdetection's work_dir is train.output_dir here", "train"),
    "metainfo": ("mmdetection's metainfo classes are data.classes=[name, ...] here (the COCO "
                 "files' other categories left out)", "train"),
    "train.val_interval": ("mmdetection's val_interval is train.eval_period_epochs here "
                           "(train.eval_period in iterations)", "eval_period"),
    # mmdetection's model parts and detectron2's lower-cased sections, where users look first
    "model.rpn_head": ("mmdetection's rpn_head is model.rpn here (its anchor_generator "
                       "model.anchor_generator)", "rpn"),
    "model.roi_head": ("mmdetection's roi_head is model.roi_heads here (its bbox_head "
                       f"num_classes model.num_classes; {MASK_HEAD})", "roi_heads"),
    "model.roi_heads.mask_head": (f"mmdetection's mask_head has no section here: {MASK_HEAD}",
                                  "score_thresh"),
    "model.roi_heads.cls_agnostic_mask": ("class-agnostic masks are not offered here (one mask "
                                          "per class; cls_agnostic_bbox_reg is the box "
                                          "regression's)", "score_thresh"),
    "model.train_cfg": ("mmdetection's train_cfg samplers are model.rpn.batch_size_per_image "
                        "and model.roi_heads.batch_size_per_image here", "roi_heads"),
    "model.roi_heads.num_classes": ("the number of classes is model.num_classes here, without "
                                    "the background", "score_thresh"),
    "model.backbone.depth": ("mmdetection's depth=50 is model.backbone.name=resnet50 here",
                             "name"),
    "model.backbone.frozen_stages": ("mmdetection's frozen_stages=N is "
                                     "model.backbone.freeze_at=N+1 here (frozen_stages=1, the "
                                     "stem and res2: freeze_at=2; -1: freeze_at=0)", "freeze_at"),
    "model.backbone.norm_eval": ("mmdetection's norm_eval=True (BN statistics and affine kept) "
                                 "is model.backbone.norm=frozen_bn here", "norm"),
    "model.backbone.norm_cfg": ("mmdetection's norm_cfg is model.backbone.norm=bn, syncbn, gn "
                                "or frozen_bn here", "norm"),
    "train.lr": ("the learning rate is train.base_lr here", "base_lr"),
    # a classifier's model keys elsewhere (timm's and torchvision's args are flat; the train
    # section, every task's, has no key telling a classifier's apart)
    "data.label_smoothing": ("the label smoothing is model.label_smoothing here", "image_size"),
    "model.drop_path_rate": ("a classifier's drop path rate is model.options={drop_path_rate: "
                             "X} here", "label_smoothing"),
    "optimizer": ("mmdetection 2.x's optimizer lr, momentum and weight_decay are "
                  "train.base_lr, train.momentum and train.weight_decay here", "train"),
    "solver": ("detectron2's SOLVER is the train section here (SOLVER.BASE_LR: train.base_lr, "
               "IMS_PER_BATCH: train.batch_size, MAX_ITER: train.max_iter)", "train"),
    **{f"data.{key}": ("mmdetection 2.x's samples_per_gpu (per GPU) is train.batch_size (over "
                       "all processes) here, its workers_per_gpu data.num_workers",
                       "num_workers")
       for key in ("samples_per_gpu", "workers_per_gpu")},
    # a segmentation config's keys in a detector's
    "data.train.crop_size": ("data.train.crop_size is a segmentation config's key (task "
                             "sem_seg); a detector trains at data.train.min_size and max_size "
                             "(large-scale jitter: data.train.jitter_size)", "min_size"),
    "model.head": ("model.head is a segmentation config's key (task sem_seg: deeplabv3, "
                   "deeplabv3plus, fcn); this config is a detector's", "roi_heads"),
    "model.class_weight": ("model.class_weight is a segmentation config's key (task sem_seg); "
                           "a detector's losses take no class weights", "roi_heads"),
}
DELETE = ("mmdetection's _delete_ is not read here: lists are replaced whole, each key of a "
          "section is set on its own, and `{}` clears a section of free keys "
          "(train.lr_multipliers)")


def other_key_hint(key: str, siblings: Sequence[str]) -> str:
    """For another project's lower-case key, what it is here (else ""); `siblings`: the
    valid keys beside it."""
    if key.rsplit(".", 1)[-1] == "_delete_":
        return f"; {DELETE}"
    entries = OTHER_KEYS.get(key, [])  # (one, or one per task: the sibling tells them)
    for hint, needed in entries if isinstance(entries, list) else [entries]:
        if needed in siblings:
            return f"; {hint}"
    return ""


# where detectron2's value does not carry over as it is
DETECTRON2_VALUES = {
    "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": (
        "a limit of the total norm, DETR's and Mask2Former's CLIP_TYPE full_model; "
        "detectron2's default CLIP_TYPE value clamps each gradient element, and norm each "
        "parameter's gradient alone, which have no key here: a total-norm limit of the same "
        "number clips far harder"),
    "SOLVER.CLIP_GRADIENTS.ENABLED": "with its CLIP_VALUE, a limit of the total norm alone",
    "MODEL.PIXEL_MEAN": "in RGB order: detectron2's is BGR, reverse it",
    "MODEL.PIXEL_STD": "in RGB order: detectron2's is BGR, reverse it",
    "MODEL.RESNETS.DEPTH": "resnet50 for DEPTH 50",
    "SOLVER.AMP.ENABLED": "fp16 on a GPU, as detectron2's AMP; true is bf16 here",
    "TEST.AUG.ENABLED": "the test scales as a list turn it on; test.flip=true, test.max_size",
    **{f"MODEL.ROI_MASK_HEAD.{key}": "a width per convolution: NUM_CONV 4 of CONV_DIM 256 is "
                                     "[256, 256, 256, 256]" for key in ("NUM_CONV", "CONV_DIM")},
    **{f"MODEL.{head}.POOLER_TYPE": "true for ROIAlignV2, false for ROIAlign; one setting for "
                                    "the box and mask poolers"
       for head in ("ROI_BOX_HEAD", "ROI_MASK_HEAD")},
    **{f"MODEL.{head}.POOLER_SAMPLING_RATIO": "one setting for the box and mask poolers"
       for head in ("ROI_BOX_HEAD", "ROI_MASK_HEAD")},
}


def _upper_case(key: str) -> bool:
    return key == key.upper() and any(c.isalpha() for c in key)


def _value_note(key: str) -> str:
    """What a detectron2 key's value means here where it differs (DETECTRON2_VALUES)."""
    return f" ({DETECTRON2_VALUES[key]})" if key in DETECTRON2_VALUES else ""


def key_hint(key: str) -> str:
    """For a key in detectron2's upper case, what it is here (else "")."""
    if not key or not _upper_case(key):
        return ""
    ours = DETECTRON2_KEYS.get(key)
    if key in DETECTRON2_ABSENT:
        return f"; detectron2's {key}: {DETECTRON2_ABSENT[key]} ({README})"
    return (f"; detectron2's {key} is {ours}=VALUE here{_value_note(key)}" if ours else
            "; the keys here are lower-case (detectron2's SOLVER.BASE_LR is train.base_lr=VALUE)"
            ) + f", one word key=value ({README})"


def section_hint(keys: Sequence[str]) -> str:
    """For a config file's section in detectron2's upper case (SOLVER: {BASE_LR: ...}, given
    as its flattened `keys`), what each key it holds is here (else "")."""
    if not keys or not all(_upper_case(k) for k in keys):
        return ""
    known = [f"{k} is {DETECTRON2_KEYS[k]}{_value_note(k)}" if k in DETECTRON2_KEYS else
             f"{k}: {DETECTRON2_ABSENT[k]}" for k in keys
             if k in DETECTRON2_KEYS or k in DETECTRON2_ABSENT]
    return ("; detectron2's upper-case keys are not read here, the keys are lower-case"
            + (f": {', '.join(known)}" if known else "") + f" ({README})")


def _flag_advice(training: bool) -> dict[str, str]:
    output = "train.output_dir=DIR" if training else "--output DIR"
    several_gpus = "one process per GPU: torchrun --nproc_per_node=N tools/TOOL.py ..."
    several_machines = ("several machines: torchrun --nnodes=M --rdzv_backend=c10d "
                        "--rdzv_endpoint=HOST:PORT tools/TOOL.py ... (README)")
    overrides = "overrides are key=value words after the config, e.g. train.max_iter=100"
    batch = ("train.batch_size=N (images per step over all processes: torchvision's {} is per "
             "GPU, times the GPUs)")
    return {
        "--config-file": "the config is the first argument: tools/TOOL.py CONFIG ...",
        "--config": "the config is the first argument: tools/TOOL.py CONFIG ...",
        "--num-gpus": several_gpus, "--gpus": several_gpus, "--launcher": several_gpus,
        "--num-machines": several_machines, "--machine-rank": several_machines,
        "--dist-url": several_machines,
        "--eval-only": "evaluate with tools/eval.py CONFIG --weights CKPT --output DIR",
        "--opts": overrides, "--cfg-options": overrides,
        "--work-dir": output, "--output-dir": output,
        "--amp": "train.amp=bf16 (or fp16 on a GPU)",
        "--batch-size": batch.format("--batch-size"), "-b": batch.format("-b"),
        "-j": "data.num_workers=N", "--lr-warmup-decay": "train.warmup_factor=X",
        "--clip-grad-norm": "train.clip_grad_norm=X",
        "--start-epoch": "--resume continues from the last checkpoint's iteration",
        "--no-validate": "train.eval_period=0 and data.val.ann_file=null (no evaluation)",
        "--gpu-ids": several_gpus, "--gpu-id": "train.device=cuda:N",
        "--deterministic": "train.seed=N (the same seed gives the same weights on a CPU; on a "
                           "GPU cuDNN may differ)",
        "--eval-options": "tools/eval.py prints the per-class table always (mmdetection's "
                          "classwise=True)",
        "--epochs": "train.epochs=N", "--lr": "train.base_lr=X", "--seed": "train.seed=N",
        "--device": "train.device=cpu or cuda", "--workers": "data.num_workers=N",
        "--auto-scale-lr": "train.base_lr=X for your train.batch_size (the linear rule: "
                           "twice the batch, twice the rate)",
        # timm's train.py
        "--model-ema": "train.ema_decay=0.9998", "--model-ema-decay": "train.ema_decay=X",
        # mmdetection's test.py
        "--checkpoint": ("model.weights=CKPT (fine-tuning), or --resume-from CKPT" if training
                         else "--weights CKPT"),
        "--out": (output if training else "--output DIR (tools/eval.py writes the detections "
                                          "there: coco_instances_results.json, metrics.json)"),
        "--show-dir": "pictures of the predictions: tools/demo.py CONFIG --weights CKPT "
                      "--input IMAGES --output DIR; of the annotations: tools/browse_dataset.py",
        "--show": "pictures of the predictions: tools/demo.py CONFIG --weights CKPT --input "
                  "IMAGES --output DIR",
        "--eval": "tools/eval.py scores COCO's box (and mask) AP; VOC's AP too with "
                  "data.val.voc_metric=area or 11point",
        # torchvision's references/detection and references/segmentation train.py
        "--model": "the config names the model: configs/detection/faster_rcnn_R_50_FPN_1x.yaml "
                   "(fasterrcnn_resnet50_fpn), mask_rcnn_R_50_FPN_1x.yaml, "
                   "configs/segmentation/deeplabv3_R_50_os8.yaml (deeplabv3_resnet50) ...",
        "--data-path": "data.train.img_dir=DIR data.train.ann_file=JSON (and data.val.*; "
                       "segmentation folders: data.train.mask_dir=DIR for the ann_file)",
        "--dataset": "data.train.ann_file=JSON (COCO format) and data.val.*",
        "--test-only": "tools/eval.py CONFIG --weights CKPT --output DIR",
        "--weights": "model.weights=CKPT" if training else "--weights CKPT",
        "--weights-backbone": "model.backbone.weights=PATH (a torchvision, timm or own ResNet)",
        "--lr-steps": "train.lr_step_epochs=[16,22] with train.epochs (and train.lr_steps=[] "
                      "train.warmup_iters=0 train.warmup_epochs=W where the config counts "
                      "iterations, W: torchvision's warmup of min(1000, steps per epoch - 1) "
                      "steps in epochs; or train.lr_steps in iterations)",
        "--lr-gamma": "train.gamma=X", "--momentum": "train.momentum=X",
        "--wd": "train.weight_decay=X", "--weight-decay": "train.weight_decay=X",
        "--lr-scheduler": "train.lr_decay=step, cosine or poly",
        "--lr-warmup-epochs": "train.warmup_epochs=X (or train.warmup_iters=N)",
        "--lr-warmup-method": "train.warmup_factor=X (linear warmup from X * base_lr)",
        "--trainable-backbone-layers": "model.backbone.freeze_at=5-N (3 layers: freeze_at=2, "
                                       "the stem and res2 frozen)",
        "--sync-bn": "model.backbone.norm=syncbn (segmentation: model.head.norm=syncbn too; "
                     "the detectors' frozen_bn has no statistics to sync)",
        "--aux-loss": "model.aux_head.enabled=true (segmentation; on by default)",
        "--aspect-ratio-group-factor": "training batches are always grouped by aspect ratio "
                                       "(landscape, portrait, near-square): no key",
        "--data-augmentation": "the augmentation is data.train's keys (detection: min_size, "
                               "max_size, hflip_prob; lsj: data.train.jitter_size=1024; "
                               "multiscale: data.train.min_size=[480,512,...,800]; "
                               "--print-config lists them)",
        "--print-freq": "train.log_period=N (iterations)",
        "--rpn-score-thresh": "model.rpn.score_thresh=X",
        # mmdetection's test.py and demo/image_demo.py
        "--tta": "test-time augmentation is test.min_sizes=[...] test.max_size=N test.flip=true",
        "--aug-test": "test-time augmentation is test.min_sizes=[...] test.max_size=N "
                      "test.flip=true",
        # mmsegmentation's demo/image_demo.py
        "--palette": "data.palette=[[r, g, b], ...] (one per class) or a .json file of that "
                     "list (segmentation)",
        "--opacity": "the overlay's opacity is 0.5, no key",
        "--out-file": output,
        "--format-only": "tools/eval.py writes the detections alone for a file without "
                         "annotations (test-dev)",
        "--pred-score-thr": "--min-score X (tools/demo.py)",
        "--out-dir": output,
        # detectron2's demo/demo.py
        "--confidence-threshold": "--min-score X (tools/demo.py)",
        "--video-input": "--input VIDEO (tools/demo.py takes images, folders and videos)",
        "--webcam": "tools/demo.py reads files: --input IMAGES_OR_VIDEO",
    }


# where a segmentation config is given: mmsegmentation's spellings, and what differs
SEGMENTATION_FLAGS = {
    "--tta": "test-time augmentation is test.scales=[0.5,0.75,1.0,1.25,1.5,1.75] test.flip=true",
    "--aug-test": "test-time augmentation is test.scales=[0.5,0.75,1.0,1.25,1.5,1.75] "
                  "test.flip=true",
    "--out": "--save-predictions (each image's class map as a PNG under --output DIR)",
    "--format-only": "--save-predictions (each image's class map as a PNG under --output DIR)",
    "--eval": "tools/eval.py scores mIoU, mAcc and aAcc (pixel_acc) with the per-class IoU",
    "--data-path": "data.train.img_dir=DIR data.train.mask_dir=DIR (and data.val.*), or "
                   "data.train.ann_file=JSON for COCO data",
}


EVALUATION_FLAGS = ("--out", "--format-only")  # (what they are in tools/eval.py alone)
# a pretraining config's (torchvision's classification reference)
CLASSIFICATION_FLAGS = {
    "--data-path": "data.root=DIR (its train/ and val/ class folders)",
    "--tta": "a classifier is evaluated on one center crop here (no test-time augmentation)",
    "--aug-test": "a classifier is evaluated on one center crop here (no test-time "
                  "augmentation)",
    **dict.fromkeys(("--label-smoothing", "--smoothing"), "model.label_smoothing=X"),
    "--warmup-epochs": "train.warmup_epochs=N",
    "--sched": "train.lr_decay=cosine (or step, poly)",
    "--opt": "train.optimizer=sgd or adamw",
    "--train-crop-size": "data.image_size=N",
    "--val-resize-size": "data.val_resize=N (the center crop: data.image_size)",
    "--interpolation": "data.val_interpolation=bilinear or bicubic (or area)",
    "--drop-path": "model.options={drop_path_rate: X} (a space after the colon)",
    **dict.fromkeys(("--mixup-alpha", "--cutmix-alpha", "--mixup", "--cutmix", "--auto-augment",
                     "--aa", "--random-erase", "--reprob", "--ra-sampler"),
                    "not offered here (the augmentation is a random resized crop and a flip: "
                    "data.scale, data.hflip)"),
    "--norm-weight-decay": "not offered here: norm weights and biases are never decayed",
}


def flag_hints(words: Sequence[str], training: bool, tool: str = "",
               task: str = "") -> list[str]:
    """`--flag: what it is here` for the flags of other projects among `words` (argparse's
    unrecognized arguments; `--flag=value` too); `tool`: the tool's file name; `task`: the
    given config's (sem_seg: SEGMENTATION_FLAGS)."""
    advice = _flag_advice(training)
    if task == "sem_seg":
        advice.update({flag: hint for flag, hint in SEGMENTATION_FLAGS.items()
                       if flag not in EVALUATION_FLAGS or tool == "eval.py"})
    elif task == "classification":
        advice.update(CLASSIFICATION_FLAGS)
    if tool == "demo.py":  # (not "use tools/demo.py" there)
        advice["--show"] = advice["--show-dir"] = ("the pictures go into --output DIR (no "
                                                   "window opens)")
    hints = []
    for word in words:
        flag = word.split("=", 1)[0]
        if flag not in advice and flag[:1] == "-" and flag[1:2].isalpha() and flag[2:].isdigit():
            flag = flag[:2]  # (-j8: a short flag's value joined to it)
        if flag in advice and not any(h.startswith(f"{flag}:") for h in hints):
            hints.append(f"{flag}: {advice[flag]}")
    return hints
