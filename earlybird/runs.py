"""A run folder: every file a run writes is named here, and written atomically."""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from .io import atomic_save, safe_load

__all__ = ["RunDir", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "earlybird.checkpoint/1"


def _ratio_tag(ratio: float) -> str:
    return f"{ratio:g}"


@dataclass(frozen=True)
class RunDir:
    """Names of a run's files. ``RunDir("runs/demo").pruned(0.5)`` -> ``runs/demo/pruned-0.5.pt``."""

    root: Path

    def __init__(self, root: os.PathLike | str) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def log(self) -> Path:
        return self.root / "log.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    def checkpoint(self, stage: str) -> Path:
        """``search.pt``, ``train.pt`` or ``retrain-<ratio>-<mode>.pt``."""
        return self.root / f"{stage}.pt"

    def pruned(self, ratio: float) -> Path:
        return self.root / f"pruned-{_ratio_tag(ratio)}.pt"

    @staticmethod
    def retrain_stage(ratio: float, mode: str) -> str:
        return f"retrain-{_ratio_tag(ratio)}-{mode}"

    # ------------------------------------------------------------------------------ writing
    def write_text(self, path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def write_config(self, config: dict[str, Any]) -> None:
        self.write_text(self.config, yaml.safe_dump(config, sort_keys=False))

    def read_config(self) -> Optional[dict[str, Any]]:
        return yaml.safe_load(self.config.read_text()) if self.config.is_file() else None

    def append_log(self, record: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
            fh.flush()

    def read_log(self) -> list[dict[str, Any]]:
        if not self.log.is_file():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    def write_json(self, path: Path, data: Any) -> None:
        self.write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")

    def save_checkpoint(self, stage: str, state: dict[str, Any]) -> None:
        atomic_save({"format": CHECKPOINT_FORMAT, "stage": stage, **state}, self.checkpoint(stage),
                    keep_previous=True)

    def load_checkpoint(self, stage: str) -> Optional[dict[str, Any]]:
        path = self.checkpoint(stage)
        return safe_load(path, CHECKPOINT_FORMAT) if path.exists() else None
