"""Data: the shipped CIFAR-10 subset, CIFAR-10/100, ImageNet and any ImageFolder.

CIFAR-sized sets are held in memory as uint8 tensors and augmented a batch at a time (pad 4,
random 32x32 crop, horizontal flip, the reference normalisation): on a 2-core machine this is
several times faster than per-image PIL transforms, and the order and augmentation of batch
``b`` of epoch ``e`` depend only on ``(seed, e, b)``, so a run resumed mid-epoch sees exactly the
batches it would have seen. Larger images go through torchvision's ``ImageFolder`` and a
``DataLoader`` (RandomResizedCrop 224 and flip for training, resize 256 + center crop 224 to test).
"""

from __future__ import annotations

import logging
import os
import tarfile
from importlib import resources
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from .batches import Batches
from .images import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD, ImageSet  # noqa: F401

log = logging.getLogger(__name__)

__all__ = [
    "ImageSet",
    "Batches",
    "DATASETS",
    "CIFAR_MEAN",
    "CIFAR_STD",
    "load_dataset",
    "load_packed",
    "pack_images",
    "read_archive",
    "subset",
    "folder_loaders",
    "SUBSET_FILE",
]

DATASETS = ("cifar10-subset", "cifar10", "cifar100", "imagenet", "imagefolder")
SUBSET_FILE = "cifar10_subset.npz"


def _decode(blobs: Sequence[bytes]) -> Tensor:
    from torchvision.io import ImageReadMode, decode_jpeg

    data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    return torch.stack(decode_jpeg(data, mode=ImageReadMode.RGB))


def _archive_files(path: Path) -> dict[str, dict[str, list[tuple[str, bytes]]]]:
    """``{split: {class: [(file name, jpeg bytes), ...]}}`` from a folder or a tar, in one pass."""
    found: dict[str, dict[str, list[tuple[str, bytes]]]] = {"train": {}, "test": {}}
    if path.is_dir():
        for split in found:
            for f in sorted((path / split).glob("*/*.jpg")):
                found[split].setdefault(f.parent.name, []).append((f.name, f.read_bytes()))
    elif path.is_file() and tarfile.is_tarfile(path):
        with tarfile.open(path) as tar:
            for member in tar:  # sequential: a .tar.gz cannot seek back
                parts = Path(member.name).parts
                if member.isfile() and len(parts) == 3 and parts[0] in found:
                    blob = tar.extractfile(member).read()  # type: ignore[union-attr]
                    found[parts[0]].setdefault(parts[1], []).append((parts[2], blob))
    else:
        raise FileNotFoundError(f"{path}: not a folder or a tar archive with train/ and test/")
    for split, by_class in found.items():
        if not by_class:
            raise ValueError(f"{path}: no {split}/<class>/*.jpg images found")
        for items in by_class.values():
            items.sort()
    return found


def read_archive(path: Union[str, os.PathLike]) -> dict[str, ImageSet]:
    """Read ``train/<class>/*.jpg`` and ``test/<class>/*.jpg`` from a folder or a .tar(.gz)."""
    out = {}
    for split, by_class in _archive_files(Path(path)).items():
        classes = sorted(by_class)
        blobs = [b for c in classes for _, b in by_class[c]]
        labels = torch.tensor([i for i, c in enumerate(classes) for _ in by_class[c]])
        out[split] = ImageSet(_decode(blobs), labels, classes)
    return out


def pack_images(
    archive: Union[str, os.PathLike],
    out: Union[str, os.PathLike],
    train_per_class: int = 1000,
    test_per_class: int = 200,
    seed: int = 0,
) -> None:
    """Pack a class-balanced random subset of an archive's JPEGs into one ``.npz`` file.

    The JPEG bytes are kept as they are (no re-encoding); the file loads without pickle.
    """
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    found = _archive_files(Path(archive))
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        classes = sorted(found[split])
        blobs, labels = [], []
        for label, c in enumerate(classes):
            pool = found[split][c]
            if len(pool) < per_class:
                raise ValueError(f"{split}/{c} has {len(pool)} images, {per_class} asked")
            for i in sorted(rng.choice(len(pool), per_class, replace=False)):
                blobs.append(pool[i][1])
                labels.append(label)
        arrays[f"{split}_jpeg"] = np.frombuffer(b"".join(blobs), dtype=np.uint8)
        arrays[f"{split}_offsets"] = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
        arrays[f"{split}_labels"] = np.asarray(labels, dtype=np.int64)
        arrays["classes"] = np.asarray(classes)
    from ..run.io import atomic_write

    atomic_write(out, lambda fh: np.savez_compressed(fh, **arrays))  # type: ignore[arg-type]


def load_packed(path: Union[str, os.PathLike, None] = None) -> dict[str, ImageSet]:
    """Load a file written by :func:`pack_images` (default: the shipped CIFAR-10 subset)."""
    if path is None:
        ref = resources.files("earlybird") / "assets" / SUBSET_FILE
        with resources.as_file(ref) as p:
            return load_packed(p)
    with np.load(path, allow_pickle=False) as z:
        classes = [str(c) for c in z["classes"]]
        out = {}
        for split in ("train", "test"):
            raw, offsets = z[f"{split}_jpeg"].tobytes(), z[f"{split}_offsets"]
            blobs = [raw[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
            out[split] = ImageSet(_decode(blobs), torch.from_numpy(z[f"{split}_labels"]), classes)
    return out


def _torchvision_cifar(name: str, root: str, download: bool) -> dict[str, ImageSet]:
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    out = {}
    for split in ("train", "test"):
        ds = cls(root, train=split == "train", download=download)
        out[split] = ImageSet(
            torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(),
            torch.tensor(ds.targets),
            list(ds.classes),
        )
    return out


def load_dataset(name: str, data: Optional[str] = None, download: bool = False):
    """Train and test data for a dataset name (see :data:`DATASETS`).

    ``cifar10-subset``: the shipped 10,000/2,000-image subset, or with ``data`` a packed
    ``.npz``, a ``.tar.gz`` of JPEG folders or such a folder (e.g. the full CIFAR-10 archive).
    ``cifar10``/``cifar100``: torchvision's sets under ``data`` (downloaded if ``download``).
    ``imagenet``/``imagefolder``: ``data/train`` and ``data/val`` (or ``data/test``) folders.
    Returns ``(train, test, info)``; CIFAR-sized sets are :class:`ImageSet`, others ImageFolder.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {list(DATASETS)}")
    if name == "cifar10-subset":
        if data is None:
            sets = load_packed()
        elif str(data).endswith(".npz"):
            sets = load_packed(data)
        else:
            sets = read_archive(data)
        return sets["train"], sets["test"], {"size": 32, "mean": CIFAR_MEAN, "std": CIFAR_STD}
    if name in ("cifar10", "cifar100"):
        sets = _torchvision_cifar(name, data or "./data", download)
        return sets["train"], sets["test"], {"size": 32, "mean": CIFAR_MEAN, "std": CIFAR_STD}
    if data is None or not Path(data, "train").is_dir():
        raise FileNotFoundError(
            f"--data must be a folder with train/ and val/ (or test/) sub-folders for {name}, got {data!r}"
        )
    from torchvision import datasets
    from torchvision import transforms as T

    val = Path(data, "val") if Path(data, "val").is_dir() else Path(data, "test")
    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train = datasets.ImageFolder(
        str(Path(data, "train")),
        T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), norm]),
    )
    test = datasets.ImageFolder(str(val), T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), norm]))
    return train, test, {"size": 224, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}


def subset(data: Any, n: Optional[int], seed: int = 0) -> Any:
    """``n`` items of ``data`` drawn at random with ``seed`` (in their original order); all of
    it when ``n`` is None or not smaller. An :class:`ImageSet` stays one, anything else
    becomes a ``torch.utils.data.Subset``.

    >>> s = ImageSet(torch.zeros(6, 3, 2, 2, dtype=torch.uint8), torch.arange(6), ["a"])
    >>> subset(s, 3, seed=0).labels.tolist(), len(subset(s, None))
    ([2, 3, 5], 6)
    """
    if n is None or n >= len(data):
        return data
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    if isinstance(data, ImageSet):
        return ImageSet(data.images[idx], data.labels[idx], data.classes)
    return torch.utils.data.Subset(data, idx.tolist())


def folder_loaders(
    train: Any,
    test: Any,
    batch_size: int,
    test_batch_size: int,
    seed: int,
    workers: int,
    rank: int = 0,
    world: int = 1,
) -> tuple[Any, Any]:
    """DataLoaders for image folders (ImageNet): shuffled training batches of ``batch_size``
    per rank (a DistributedSampler under torchrun, ``set_epoch`` forwarded), and each rank's
    every ``world``-th test image, each image seen exactly once."""
    from torch.utils.data import DataLoader, DistributedSampler

    keep: dict[str, Any] = dict(num_workers=workers, pin_memory=True, persistent_workers=workers > 0)
    if world == 1:
        train_l = DataLoader(
            train,
            batch_size,
            shuffle=True,
            drop_last=True,
            generator=torch.Generator().manual_seed(seed),
            **keep,
        )
    else:
        sampler: DistributedSampler = DistributedSampler(
            train, world, rank, shuffle=True, seed=seed, drop_last=True
        )
        train_l = DataLoader(train, batch_size, sampler=sampler, drop_last=True, **keep)
        train_l.set_epoch = sampler.set_epoch  # type: ignore[attr-defined]
    shard = torch.utils.data.Subset(test, range(rank, len(test), world))
    return train_l, DataLoader(shard, test_batch_size, **keep)
