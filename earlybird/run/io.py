"""Saving what earlybird makes: atomic writes, and pruned models as plain data.

A pruned model is saved as its pruning history (layer names and channel indices), a description
of the example inputs, and its state dict. Loading replays the history on a freshly built dense
model, so a file never carries code: it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping, Union

import torch
from torch import Tensor, nn

from ..errors import CheckpointError
from ..graph import History, replay_history

__all__ = [
    "atomic_write",
    "write_text",
    "write_json",
    "atomic_save",
    "digest",
    "previous",
    "safe_load",
    "save_pruned",
    "load_pruned",
    "input_spec",
    "make_inputs",
    "attach_record",
    "PRUNED_FORMAT",
]

PathLike = Union[str, os.PathLike]
PRUNED_FORMAT = "earlybird.pruned/1"
RECORD_ATTR = "_earlybird_pruning"


def digest(obj: Any) -> str:
    """SHA-256 over the contents of nested dicts/lists of tensors and plain values.

    Independent of how ``torch.save`` lays the bytes out, so a file can carry its own digest.
    """
    h = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy().data)  # its buffer, not a copy
        elif isinstance(value, dict):
            h.update(b"{")
            for k in sorted(value, key=str):
                h.update(repr(k).encode())
                feed(value[k])
            h.update(b"}")
        elif isinstance(value, (list, tuple)):
            h.update(b"[")
            for v in value:
                feed(v)
            h.update(b"]")
        else:
            h.update(repr(value).encode())

    feed(obj)
    return h.hexdigest()


def _umask() -> int:
    """The process's umask: from ``/proc/self/status`` where there is one (no change to the
    process), else read by setting it and putting it back at once."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: PathLike, write: Callable[[BinaryIO], object], *, keep_previous: bool = False) -> Path:
    """The one way earlybird writes a file: ``write(fh)`` into a temporary file beside
    ``path``, flush, fsync, then rename it over ``path``.

    A crash or a full disk leaves any previous file at ``path`` as it was, and no temporary
    file behind; ``keep_previous`` also keeps the file being replaced as
    ``<name>.prev<suffix>`` (a hard link, made before the rename). The file gets the
    permissions an ordinary ``open()`` would give it (``0o666`` less the umask).

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> _ = atomic_write(p, lambda fh: fh.write(b"one"))
    >>> p.read_bytes(), sorted(x.name for x in p.parent.iterdir())
    (b'one', ['a.txt'])
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # as open() would: mkstemp makes it 0600
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        if keep_previous and path.exists():
            link = path.with_name(f".{path.name}.prev.tmp")
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
            os.link(path, link)
            os.replace(link, previous(path))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically."""
    return atomic_write(path, lambda fh: fh.write(text.encode()))


def write_json(path: PathLike, data: Any, *, indent: int = 2, sort_keys: bool = False) -> Path:
    """Write ``data`` as JSON (one trailing newline) atomically."""
    return write_text(path, json.dumps(data, indent=indent, sort_keys=sort_keys) + "\n")


def atomic_save(obj: Any, path: PathLike, *, keep_previous: bool = False) -> None:
    """``torch.save`` through :func:`atomic_write`.

    A dict gets a ``sha256`` entry over its contents, checked by :func:`safe_load`.
    """
    if isinstance(obj, dict):
        obj = {
            **{k: v for k, v in obj.items() if k != "sha256"},
            "sha256": digest({k: v for k, v in obj.items() if k != "sha256"}),
        }
    atomic_write(path, lambda fh: torch.save(obj, fh), keep_previous=keep_previous)


def previous(path: PathLike) -> Path:
    """Where :func:`atomic_save` keeps the file it replaced: ``search.pt`` -> ``search.prev.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def safe_load(path: PathLike, expected_format: str) -> dict:
    """Load a file earlybird wrote, with ``weights_only=True``; errors name the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, foreign or code-carrying files
        raise CheckpointError(
            f"{path}: not a readable earlybird file "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
            f"{_fallback(path)}"
        ) from exc
    if not isinstance(obj, dict) or obj.get("format") != expected_format:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path}: expected a {expected_format!r} file, found {found!r}")
    if "sha256" in obj and digest({k: v for k, v in obj.items() if k != "sha256"}) != obj["sha256"]:
        raise CheckpointError(
            f"{path}: contents do not match its checksum (corrupted or tampered with){_fallback(path)}"
        )
    return obj


def _fallback(path: Path) -> str:
    prev = previous(path)
    return (
        f"; the previous good file is {prev}: copy it over {path.name} to resume from it"
        if prev.is_file()
        else ""
    )


def input_spec(example_inputs: Any) -> Any:
    """Shapes and dtypes of example inputs, as plain data (tensor, list/tuple or dict of them)."""
    if isinstance(example_inputs, Tensor):
        return {"shape": list(example_inputs.shape), "dtype": str(example_inputs.dtype)}
    if isinstance(example_inputs, Mapping):
        return {"dict": {str(k): input_spec(v) for k, v in example_inputs.items()}}
    if isinstance(example_inputs, (list, tuple)):
        return {"list": [input_spec(v) for v in example_inputs]}
    raise TypeError(
        f"example_inputs must be a tensor or a list/tuple/dict of tensors, "
        f"got {type(example_inputs).__name__}"
    )


def make_inputs(spec: Any, device: Union[str, torch.device] = "cpu") -> Any:
    """Zero tensors matching an :func:`input_spec`."""
    if "dict" in spec:
        return {k: make_inputs(v, device) for k, v in spec["dict"].items()}
    if "list" in spec:
        return tuple(make_inputs(v, device) for v in spec["list"])
    dtype = getattr(torch, spec["dtype"].removeprefix("torch."))
    return torch.zeros(spec["shape"], dtype=dtype, device=device)


def save_pruned(model: nn.Module, path: PathLike, **extra: Any) -> None:
    """Save a model returned by :meth:`EarlyBirdPruner.prune` as plain data, atomically.

    ``extra`` holds plain values (numbers, strings, tensors) stored beside it, e.g. the ratio.

    >>> import earlybird as eb, tempfile, torchvision, torch
    >>> dense = torchvision.models.resnet18(num_classes=10)
    >>> x = torch.randn(1, 3, 32, 32)
    >>> small = eb.EarlyBirdPruner(dense, x, ratios=[0.5]).prune(0.5, force=True)
    >>> path = tempfile.mkdtemp() + "/small.pt"
    >>> eb.save_pruned(small, path)
    >>> again = eb.load_pruned(path, torchvision.models.resnet18(num_classes=10))
    >>> bool(torch.equal(again.eval()(x), small.eval()(x)))
    True
    """
    record = getattr(model, RECORD_ATTR, None)
    if record is None:
        raise ValueError(
            "this model carries no pruning history; save models returned by "
            "EarlyBirdPruner.prune() (a dense model saves with torch.save(state_dict))"
        )
    atomic_save(
        {
            "format": PRUNED_FORMAT,
            "history": record["history"],
            "inputs": record["inputs"],
            "state_dict": model.state_dict(),
            "extra": dict(extra),
        },
        path,
    )


def load_pruned(path: PathLike, model: nn.Module) -> nn.Module:
    """Rebuild a saved pruned model on ``model``, a fresh dense model from the same constructor.

    ``model`` is pruned in place and returned with the saved weights loaded.
    """
    obj = safe_load(path, PRUNED_FORMAT)
    device = next(iter(model.parameters()), torch.empty(0)).device
    replay_history(model, make_inputs(obj["inputs"], device), obj["history"])
    try:
        model.load_state_dict(obj["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path}: its weights do not fit the rebuilt model; was it made from "
            f"this architecture? ({str(exc).splitlines()[0]})"
        ) from exc
    attach_record(model, obj["history"], obj["inputs"])
    return model


def attach_record(model: nn.Module, history: History, inputs: Any) -> None:
    """Mark a pruned model with its pruning history and inputs (what :func:`save_pruned` saves)."""
    object.__setattr__(model, RECORD_ATTR, {"history": history, "inputs": inputs})
