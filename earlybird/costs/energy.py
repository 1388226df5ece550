"""Energy: an estimate from FLOPs and precision, and measurements where the machine has them.

The estimate charges every multiply-add the energy of one multiplication plus one addition at
the phase's numeric precision, from Horowitz, "Computing's energy problem (and what we can do
about it)", ISSCC 2014, figures for 45 nm: fp32 add 0.9 pJ + mult 3.7 pJ; fp16 add 0.4 pJ +
mult 1.1 pJ; int8 add 0.03 pJ + mult 0.2 pJ. bf16 is charged as fp16 and ``q8`` (qtorch's
simulated 8-bit training) as int8. It counts arithmetic only (no memory traffic), so it is a
lower bound used to compare phases and precisions, not a prediction of a power meter.

Measured energy comes from Intel RAPL (``/sys/class/powercap/intel-rapl:*/energy_uj``, CPU
packages) and NVIDIA NVML (``pynvml``, total energy since driver load) when they are readable.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

__all__ = ["PJ_PER_MAC", "ENERGY_SOURCE", "estimate_joules", "EnergyMeter"]

PJ_PER_MAC = {"fp32": 0.9 + 3.7, "fp16": 0.4 + 1.1, "bf16": 0.4 + 1.1, "int8": 0.03 + 0.2, "q8": 0.03 + 0.2}
ENERGY_SOURCE = (
    "Horowitz, 'Computing's energy problem (and what we can do about it)', "
    "ISSCC 2014, 45 nm: pJ per multiply + add"
)


def estimate_joules(macs: float, precision: str = "fp32") -> float:
    """Arithmetic energy of ``macs`` multiply-adds at ``precision``.

    >>> round(estimate_joules(1e12, "fp32"), 3), round(estimate_joules(1e12, "int8"), 3)
    (4.6, 0.23)
    """
    try:
        return macs * PJ_PER_MAC[precision] * 1e-12
    except KeyError:
        raise ValueError(f"unknown precision {precision!r}; choose from {sorted(PJ_PER_MAC)}") from None


class EnergyMeter:
    """Cumulative measured energy in joules from RAPL and NVML, or None where unreadable.

    ``powercap`` is the RAPL root (``EARLYBIRD_POWERCAP`` overrides it, for tests).
    """

    def __init__(self, powercap: Optional[str] = None) -> None:
        root = Path(powercap or os.environ.get("EARLYBIRD_POWERCAP", "/sys/class/powercap"))
        self._rapl = (
            sorted(
                p for p in root.glob("intel-rapl:*") if p.name.count(":") == 1 and (p / "energy_uj").is_file()
            )
            if root.is_dir()
            else []
        )
        self._last: dict[Path, int] = {}
        self._total_rapl = 0.0
        self._nvml = self._init_nvml()
        self._gpu0 = self._gpu_joules()
        for p in self._rapl:
            self._last[p] = self._read(p)

    @staticmethod
    def _init_nvml():
        try:
            import pynvml  # type: ignore[import-not-found]

            pynvml.nvmlInit()
            return [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception:  # noqa: BLE001 - no NVML, no driver or no GPU: nothing to measure
            return []

    @staticmethod
    def _read(p: Path) -> int:
        return int((p / "energy_uj").read_text())

    @property
    def sources(self) -> list[str]:
        return (["rapl"] if self._rapl else []) + (["nvml"] if self._nvml else [])

    def read(self) -> Optional[float]:
        """Joules used since this meter was made (RAPL counters wrap; each wrap is added)."""
        if not self.sources:
            return None
        for p in self._rapl:
            now = self._read(p)
            delta = now - self._last[p]
            if delta < 0:
                span = (
                    int((p / "max_energy_range_uj").read_text())
                    if (p / "max_energy_range_uj").is_file()
                    else 0
                )
                delta += span
            self._total_rapl += delta / 1e6
            self._last[p] = now
        return self._total_rapl + self._gpu_joules() - self._gpu0

    def _gpu_joules(self) -> float:
        if not self._nvml:
            return 0.0
        import pynvml  # type: ignore[import-not-found]

        return sum(pynvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self._nvml) / 1e3
