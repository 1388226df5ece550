"""A run folder: every file a run writes is named here, and written atomically.

The log (``log.jsonl``) is the one file that grows: a stage appends an epoch's records only
after the checkpoint that holds them is written, and a resumed stage appends what its
checkpoint holds but the log lacks (:meth:`RunDir.reconcile_log`), so whatever instant a kill
lands, every epoch is logged exactly once.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from .io import atomic_save, safe_load, write_json, write_text

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
        write_text(path, text)

    def write_config(self, config: dict[str, Any]) -> None:
        self.write_text(self.config, yaml.safe_dump(config, sort_keys=False))

    def read_config(self) -> Optional[dict[str, Any]]:
        return yaml.safe_load(self.config.read_text()) if self.config.is_file() else None

    def write_json(self, path: Path, data: Any) -> None:
        write_json(path, data, indent=2, sort_keys=True)

    def save_checkpoint(self, stage: str, state: dict[str, Any]) -> None:
        atomic_save(
            {"format": CHECKPOINT_FORMAT, "stage": stage, **state}, self.checkpoint(stage), keep_previous=True
        )

    def load_checkpoint(self, stage: str) -> Optional[dict[str, Any]]:
        path = self.checkpoint(stage)
        return safe_load(path, CHECKPOINT_FORMAT) if path.exists() else None

    # ---------------------------------------------------------------------------------- log
    def append_log(self, records: Sequence[dict[str, Any]], torn: bool = False) -> None:
        """Append records, one JSON line each, flushed to disk. (``torn``: write only the
        first half of the bytes, as a kill mid-write would; for fault tests.)"""
        if not records:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode()
        with open(self.log, "ab") as fh:
            fh.write(data[: len(data) // 2] if torn else data)
            fh.flush()
            os.fsync(fh.fileno())

    def read_log(self) -> list[dict[str, Any]]:
        """Every complete record (a torn last line, from a kill mid-write, is left out)."""
        if not self.log.is_file():
            return []
        lines = self.log.read_bytes().split(b"\n")
        return [json.loads(line) for line in lines[:-1] if line.strip()]

    def reconcile_log(self, records: Sequence[dict[str, Any]]) -> None:
        """Make sure the log holds ``records`` (the last ones a checkpoint holds), once.

        Cuts a torn last line, then appends those of ``records`` the log does not hold: none
        when they were written (they may be followed by a later stage's), all or the last of
        them when a kill landed between the checkpoint and the append. Every record names its
        stage and its epoch or check, so none is the same as another.
        """
        if self.log.is_file():
            raw = self.log.read_bytes()
            if raw and not raw.endswith(b"\n"):
                with open(self.log, "r+b") as fh:
                    fh.truncate(raw.rfind(b"\n") + 1)
                    fh.flush()
                    os.fsync(fh.fileno())
        have = {json.dumps(r, sort_keys=True) for r in self.read_log()}
        self.append_log([r for r in records if json.dumps(r, sort_keys=True) not in have])
