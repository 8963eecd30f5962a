"""Exception types. Bad input raises a ``ValueError`` (every class here but :class:`RunError`), so callers can catch
it uniformly; a run that cannot go on raises a :class:`RunError`."""


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


class RunError(RuntimeError):
    """A training run cannot go on: its folder is in use by another process, or its loss became NaN."""
