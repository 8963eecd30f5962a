"""Datasets in the official formats, batched transforms of the official pipelines, and few-shot episodes.

Modules: ``base`` (:class:`PointCloudDataset`, the item and point-order contract), ``scanobjectnn``, ``modelnet``
(+ ``modelnet_dat``, the opt-in pickle caches), ``folder`` (your own data), ``build`` (:func:`build_dataset` from a
recipe's data section), ``splits`` (stratified splits and subsets), ``fewshot``, ``transforms``, ``readers``
(file reading and the :class:`DatasetError` family) and ``cloud_files`` (one cloud from a file of a common format,
meshes sampled, for ``pointgst predict``).

``h5py`` is imported only when an h5 file is read, and nothing here imports scipy.
"""

from pointgst.data.base import PointCloudDataset
from pointgst.data.build import build_dataset
from pointgst.data.fewshot import EpisodeSubset, few_shot_episode
from pointgst.data.folder import PointCloudFolder
from pointgst.data.modelnet import (
    MODELNET10_CLASSES,
    MODELNET40_CLASSES,
    ModelNetDatCache,
    ModelNetNormalResampled,
    ModelNetPack,
    UnsafeDatasetError,
    convert_dat_to_npz,
)
from pointgst.data.readers import DatasetError, DatasetNotFoundError
from pointgst.data.scanobjectnn import SCANOBJECTNN_CLASSES, ScanObjectNN
from pointgst.data.splits import stratified_split, stratified_subset
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
