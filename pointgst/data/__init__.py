"""Datasets in the official formats, batched transforms of the official pipelines, and few-shot episodes.

``h5py`` is imported only when an h5 file is read, and nothing here imports scipy.
"""

from pointgst.data.datasets import (
    MODELNET10_CLASSES,
    MODELNET40_CLASSES,
    SCANOBJECTNN_CLASSES,
    ModelNetDatCache,
    ModelNetNormalResampled,
    ModelNetPack,
    PointCloudDataset,
    PointCloudFolder,
    ScanObjectNN,
    UnsafeDatasetError,
    build_dataset,
    convert_dat_to_npz,
    stratified_split,
    stratified_subset,
)
from pointgst.data.fewshot import EpisodeSubset, few_shot_episode
from pointgst.data.readers import DatasetError, DatasetNotFoundError
from pointgst.data.transforms import (
    AUGMENTATIONS,
    augment,
    fps_resample,
    fps_then_random_subset,
    normalize_unit_sphere,
    official_point_all,
    random_subset,
    rotate_up,
    scale_and_translate,
)

__all__ = [
    "AUGMENTATIONS",
    "MODELNET10_CLASSES",
    "MODELNET40_CLASSES",
    "SCANOBJECTNN_CLASSES",
    "DatasetError",
    "DatasetNotFoundError",
    "EpisodeSubset",
    "ModelNetDatCache",
    "ModelNetNormalResampled",
    "ModelNetPack",
    "PointCloudDataset",
    "PointCloudFolder",
    "ScanObjectNN",
    "UnsafeDatasetError",
    "augment",
    "build_dataset",
    "convert_dat_to_npz",
    "few_shot_episode",
    "fps_resample",
    "fps_then_random_subset",
    "normalize_unit_sphere",
    "official_point_all",
    "random_subset",
    "rotate_up",
    "scale_and_translate",
    "stratified_split",
    "stratified_subset",
]
