"""Numeric precision of a training phase: fp32, bf16 autocast, or 8-bit training with qtorch.

``q8`` simulates low-precision training the way SWALP does (Yang et al., 2019): weights,
gradients and momentum are block-floating-point quantised by ``qtorch.optim.OptimLP`` (one
shared exponent per tensor), and the activations entering and leaving every conv and linear
layer are quantised in the forward pass and their errors in the backward pass (one shared
exponent per sample). Optionally the weights are averaged over the last epochs (SWA) and the
BatchNorm statistics recomputed for the average. The simulation runs in fp32 arithmetic, so on
a CPU it is slower than fp32 training; the energy estimate charges 8-bit costs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

from ..errors import ConfigError, EarlyBirdError
from ..extras import require
from ..settings import document, option

log = logging.getLogger(__name__)

__all__ = [
    "PRECISIONS",
    "ROUNDINGS",
    "LowPrecision",
    "PrecisionConfig",
    "LowPrecisionUnavailable",
    "load_qtorch",
    "autocast",
    "unwrap_optimizer",
    "SWA",
]

PRECISIONS = ("fp32", "bf16", "q8")
ROUNDINGS = ("stochastic", "nearest")


class LowPrecisionUnavailable(EarlyBirdError, RuntimeError):
    """qtorch's C++ extension cannot be built or loaded here."""


def load_qtorch() -> Any:
    """Import qtorch, which compiles a C++ extension on first use (~25 s, then cached).

    Puts the ``ninja`` of the ``ninja`` package on PATH first, and names a missing compiler.
    Without the ``lowp`` extra (qtorch, ninja) raises :class:`~earlybird.extras.MissingExtraError`.
    """
    require("lowp", "q8 (low-precision search)")
    try:
        import ninja  # the pip package ships the binary torch's extension builder calls

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    except ImportError:
        pass
    missing = [tool for tool in ("ninja", os.environ.get("CXX", "c++")) if shutil.which(tool) is None]
    if missing:
        raise LowPrecisionUnavailable(
            f"q8 needs qtorch's C++ extension, which needs {' and '.join(missing)} on PATH "
            "(pip install ninja; apt-get install g++); fp32 and bf16 work without it"
        )
    try:
        from torch.utils.cpp_extension import _get_build_directory

        built = any(p.endswith(".so") for p in os.listdir(_get_build_directory("quant_cpu", False)))
    except Exception:  # noqa: BLE001 - only decides whether to announce the compile
        built = False
    if not built and "qtorch.quant" not in sys.modules:
        log.warning("q8: compiling qtorch's C++ extension (first use only, about 25 s)")
    try:
        with contextlib.redirect_stderr(open(os.devnull, "w")), _optimised_build():
            import qtorch.quant
            import qtorch.optim
    except Exception as exc:  # noqa: BLE001
        raise LowPrecisionUnavailable(
            f"qtorch's C++ extension did not build or load: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}; "
            "fp32 and bf16 work without it"
        ) from exc
    import qtorch

    return qtorch


@contextlib.contextmanager
def _optimised_build() -> Iterator[None]:
    """Build qtorch's CPU kernels with ``-O3``.

    qtorch compiles them on import through ``torch.utils.cpp_extension.load`` without
    optimisation flags, so the compiler runs at ``-O0``; ``-O3`` makes its block quantiser
    3x faster (``benchmarks/q8_step.py``). The result is the same code, compiled better.
    """
    from torch.utils import cpp_extension

    plain = cpp_extension.load

    def load(*args: Any, **kwargs: Any) -> Any:
        kwargs["extra_cflags"] = [*(kwargs.get("extra_cflags") or []), "-O3"]
        return plain(*args, **kwargs)

    cpp_extension.load = load
    try:
        yield
    finally:
        cpp_extension.load = plain


@document
@dataclass(frozen=True)
class LowPrecision:
    """Word lengths and rounding of ``q8`` training (SWALP's settings by default).

    >>> LowPrecision(wl_weight=6).wl_weight
    6
    """

    wl_weight: int = option(8, "q8 word length of the weights")
    wl_grad: int = option(8, "q8 word length of the gradients")
    wl_activate: int = option(8, "q8 word length of the activations")
    wl_error: int = option(8, "q8 word length of the errors (activation gradients)")
    wl_momentum: int = option(8, "q8 word length of the momentum")
    rounding: str = option("stochastic", "q8 rounding", choices=ROUNDINGS)

    def __post_init__(self) -> None:
        for name in ("wl_weight", "wl_grad", "wl_activate", "wl_error", "wl_momentum"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= 32:
                raise ConfigError("{} must be an integer in [2, 32], got " + ConfigError.value(value), name)
        if self.rounding not in ROUNDINGS:
            raise ConfigError(
                "{} must be one of "
                + ConfigError.value(list(ROUNDINGS))
                + ", got "
                + ConfigError.value(self.rounding),
                "rounding",
            )

    def _block(self, wl: int, dim: int) -> Callable[[torch.Tensor], torch.Tensor]:
        from qtorch.quant import block_quantize

        return lambda x: block_quantize(x, wl=wl, dim=dim, rounding=self.rounding)

    def optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Wrap an SGD/Adam optimizer so weights, gradients and momentum stay on the grid.

        Under ``torch.distributed`` every rank takes rank 0's weights after each step: qtorch's
        stochastic rounding draws from an unseeded generator in each process, so replicas
        that apply the same averaged gradient would still round it differently and drift apart.
        """
        load_qtorch()
        from qtorch.optim import OptimLP

        wrapped = OptimLP(
            optimizer,
            weight_quant=self._block(self.wl_weight, -1),
            grad_quant=self._block(self.wl_grad, -1),
            momentum_quant=self._block(self.wl_momentum, -1),
        )
        dist = torch.distributed
        if (
            self.rounding == "stochastic"
            and dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size() > 1
        ):
            params = [p for group in optimizer.param_groups for p in group["params"]]

            def rank0_weights(*_: Any) -> None:
                with torch.no_grad():
                    for p in params:
                        dist.broadcast(p, 0)

            wrapped.register_step_post_hook(rank0_weights)
        return wrapped

    def quantize_activations(self, model: nn.Module) -> list[Any]:
        """Quantise activations (forward) and errors (backward) around every conv and linear
        layer, through hooks; returns the hook handles (``.remove()`` them to undo)."""
        qtorch = load_qtorch()
        from qtorch.quant import quantizer

        q = quantizer(
            forward_number=qtorch.BlockFloatingPoint(wl=self.wl_activate, dim=0),
            backward_number=qtorch.BlockFloatingPoint(wl=self.wl_error, dim=0),
            forward_rounding=self.rounding,
            backward_rounding=self.rounding,
        )
        handles = []
        for m in model.modules():
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
                handles.append(m.register_forward_pre_hook(lambda _, args: (q(args[0]), *args[1:])))
                handles.append(m.register_forward_hook(lambda _, __, out: q(out)))
        return handles


@document
@dataclass(frozen=True)
class PrecisionConfig:
    """The numeric precision of each phase of a run, and the 8-bit settings.

    >>> PrecisionConfig(search_precision="q8").q8.rounding
    'stochastic'
    """

    search_precision: str = option(
        "fp32",
        "the dense search: fp32 | bf16 autocast | q8 (8-bit training simulated by qtorch)",
        choices=PRECISIONS,
    )
    retrain_precision: str = option("fp32", "the retrain of the pruned network", choices=PRECISIONS)
    swa: bool = option(
        False, "average the weights over the last epochs (SWALP) and refresh the BatchNorm statistics"
    )
    swa_start: Optional[int] = option(None, "first averaged epoch (None: 7/8 of the epochs)")
    q8: LowPrecision = option(default_factory=LowPrecision, group="8-bit training (q8)")

    def __post_init__(self) -> None:
        for name in ("search_precision", "retrain_precision"):
            value = getattr(self, name)
            if value not in PRECISIONS:
                raise ConfigError(
                    "{} must be one of "
                    + ConfigError.value(list(PRECISIONS))
                    + ", got "
                    + ConfigError.value(value),
                    name,
                )


def unwrap_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The optimizer that holds the state (OptimLP keeps it in ``.optim``)."""
    return getattr(optimizer, "optim", optimizer)


@contextlib.contextmanager
def autocast(precision: str, device: torch.device) -> Iterator[None]:
    """bf16 autocast for ``bf16``; nothing for ``fp32`` and ``q8``."""
    if precision == "bf16":
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


class SWA:
    """Stochastic weight averaging over epochs (SWALP averages the low-precision iterates in
    full precision), then a pass over the data to recompute BatchNorm statistics."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.count = 0
        self.mean = {
            k: torch.zeros_like(v, dtype=torch.float32)
            for k, v in model.state_dict().items()
            if v.is_floating_point()
        }

    def update(self) -> None:
        self.count += 1
        with torch.no_grad():
            for k, v in self.model.state_dict().items():
                if k in self.mean:
                    self.mean[k] += (v.float() - self.mean[k]) / self.count

    def apply(self, batches: Any) -> None:
        """Load the average into the model and refresh BN statistics on ``batches``."""
        if self.count == 0:
            return
        state = self.model.state_dict()
        self.model.load_state_dict(
            {k: (self.mean[k].to(v.dtype) if k in self.mean else v) for k, v in state.items()}
        )
        torch.optim.swa_utils.update_bn(batches, self.model)

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count, self.mean = int(state["count"]), dict(state["mean"])
