"""Every data source by name (``--data``) and the location argument each one takes."""
from __future__ import annotations

from typing import Optional

from tat_ext.datasets.core import ImageData
from tat_ext.errors import UserError

__all__ = ["DATASETS", "LOCATION", "load"]

DATASETS = ("digits", "cifar10", "cifar100", "imagefolder", "npz", "synthetic")
# The flag that says where a source's data is (None: built in or generated).
LOCATION = {"digits": None, "synthetic": None, "cifar10": "data_dir", "cifar100": "data_dir",
            "imagefolder": "data_dir", "npz": "data_path"}


def load(name: str, data_dir: Optional[str] = None, *, data_path: Optional[str] = None,
         download: bool = False) -> ImageData:
    """The data set ``name`` (one of :data:`DATASETS`).

    ``data_dir`` is the folder of cifar10, cifar100 and imagefolder, ``data_path`` the file of
    npz; ``download`` (cifar10/100 only) fetches CIFAR through torchvision when it is not there.

    Raises:
        ValueError: an unknown name, a missing or misplaced location, or the source's own errors
            (each names the flag or the file).
    """
    if name not in DATASETS:
        raise UserError("data", f"--data: unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    needs = LOCATION[name]
    given = {"data_dir": data_dir, "data_path": data_path}
    for key, value in given.items():
        flag = "--" + key.replace("_", "-")
        if key == needs and value is None:
            what = "file" if key == "data_path" else "folder"
            raise UserError(key, f"{flag}: --data {name} needs the {what} of its data")
        if key != needs and value is not None:
            users = [n for n, k in LOCATION.items() if k == key]
            raise UserError(key, f"{flag}: applies to --data {'/'.join(users)} only, not {name}")
    if download and name not in ("cifar10", "cifar100"):
        raise UserError("download", f"--download: applies to --data cifar10/cifar100 only, not {name}")
    if name == "digits":
        from tat_ext.datasets.digits import digits

        return digits()
    if name == "synthetic":
        from tat_ext.datasets.synthetic import synthetic

        return synthetic()
    if name in ("cifar10", "cifar100"):
        from tat_ext.datasets import cifar

        return getattr(cifar, name)(data_dir, download=download)
    if name == "imagefolder":
        from tat_ext.datasets.imagefolder import imagefolder

        return imagefolder(data_dir)
    from tat_ext.datasets.npz import npz

    return npz(data_path)
