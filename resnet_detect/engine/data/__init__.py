"""The data layer every task shares: COCO reading and category mapping, image reading with one
policy for unreadable files, packed records, samplers, collate and loaders."""
from .coco import (CategoryMapping, DatasetError, LoadStats, box_polygon, brief,
                   check_image_sizes,
                   check_segmentation, image_sizes, listing, load_coco_json, read_coco_json,
                   read_user_text, refuse_normalised_polygons, segmentation_to_mask)
from .images import (IMAGE_SUFFIXES, INPUT_FORMATS, NOT_DATA_FOLDERS, UnreadableImageError,
                     check_input_format, decoded_size, file_paths_under, files_under,
                     image_size, predictor_image, predictor_images, read_image,
                     warn_of_unreadable)
from .loaders import (CountedLoader, build_test_loader, build_train_loader, collate,
                      worker_error_message)
from .records import PackedRecords
from .samplers import GroupedBatchSampler, InferenceSampler, TrainingSampler, repeat_factors

__all__ = ["IMAGE_SUFFIXES", "INPUT_FORMATS", "NOT_DATA_FOLDERS", "CategoryMapping",
           "CountedLoader", "DatasetError",
           "GroupedBatchSampler", "InferenceSampler", "LoadStats", "PackedRecords", "box_polygon",
           "brief",
           "TrainingSampler", "UnreadableImageError", "build_test_loader", "build_train_loader",
           "check_image_sizes", "check_input_format", "check_segmentation", "predictor_image",
           "predictor_images",
           "collate", "decoded_size", "file_paths_under", "files_under",
           "image_size", "image_sizes", "listing", "load_coco_json", "read_coco_json", "read_image",
           "warn_of_unreadable",
           "read_user_text", "refuse_normalised_polygons", "repeat_factors",
           "segmentation_to_mask", "worker_error_message"]
