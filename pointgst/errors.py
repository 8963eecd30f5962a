"""Exception types. Every one is a ``ValueError`` so callers can catch bad input uniformly."""


class PointCloudError(ValueError):
    """A point cloud has the wrong shape, dtype or values, or too few points."""


class CheckpointError(ValueError):
    """A checkpoint file is corrupt, unsafe, or does not fit the model."""


class UnsafeCheckpointError(CheckpointError):
    """A ``.pth`` file holds pickled objects other than tensors; it was not unpickled."""


class UnknownNameError(ValueError):
    """An unknown backbone, tag, method or option name was requested."""


class WeightsNotAvailableError(CheckpointError):
    """Pretrained weights cannot be fetched automatically (or not offline)."""
