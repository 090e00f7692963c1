"""Image classification data for ``tat-ext train``/``compare``/``sweep``: one module per source.

==============  ===============================================  ==================  ==============
``--data``      what                                             where               default augment
==============  ===============================================  ==================  ==============
digits          scikit-learn's 8x8 digits (:mod:`.digits`)       built in            none
synthetic       random images, linear teacher (:mod:`.synthetic`)  generated         none
cifar10/100     python-pickle batches (:mod:`.cifar`)            ``--data-dir``      crop-flip
imagefolder     ``train/`` + ``val/`` class folders (:mod:`.imagefolder`)  ``--data-dir``  inception
npz             x_train, y_train, x_test, y_test (:mod:`.npz`)   ``--data-path``     none
==============  ===============================================  ==================  ==============

Every source returns an :class:`ImageData` (both splits; in memory, or lazily as files for image
folders) with its real name, source path and a fingerprint (:mod:`.fingerprint`). Model inputs:
pixels scaled to [0, 1], then standardized per channel with the training split's statistics.
Augmentation (:mod:`.augment`) and the parallel loader (:mod:`.loader`) turn splits into batches.
Nothing is downloaded unless ``--download`` asks for CIFAR.
"""
from tat_ext.datasets.cifar import cifar10, cifar100
from tat_ext.datasets.core import ImageData, Split, validation_split
from tat_ext.datasets.digits import digits
from tat_ext.datasets.imagefolder import imagefolder
from tat_ext.datasets.npz import npz
from tat_ext.datasets.sources import DATASETS, load
from tat_ext.datasets.synthetic import synthetic

__all__ = ["DATASETS", "ImageData", "Split", "cifar10", "cifar100", "digits", "imagefolder", "load", "npz",
           "synthetic", "validation_split"]
