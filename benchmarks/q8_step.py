"""Cost of an 8-bit (``q8``) training step against fp32, and what compiling qtorch's CPU
kernels with ``-O3`` buys, measured side by side in one run.

qtorch builds its C++ extension through ``torch.utils.cpp_extension.load`` without
optimisation flags (so at ``-O0``); ``earlybird.training.precision.load_qtorch`` builds it with ``-O3``.
This script times one SGD step of the benchmark suite's CPU model (VGG-11 at width 0.25, batch
125, 32x32) in fp32, in q8 with the kernels as qtorch builds them, and in q8 with earlybird's
build, plus the block quantiser alone. Run: ``python benchmarks/q8_step.py`` (the ``-O0``
build compiles into a temporary directory, about 30 s).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import common  # noqa: E402
from earlybird.training.precision import LowPrecision, load_qtorch  # noqa: E402

warnings.filterwarnings("ignore")


def unoptimised_kernels(folder: str):
    """qtorch's CPU sources compiled the way qtorch compiles them (no -O flag)."""
    from torch.utils.cpp_extension import load
    import qtorch.quant.quant_function as qf
    src = Path(qf.__file__).parent / "quant_cpu"
    return load(name="quant_cpu_O0", build_directory=folder,
                sources=[str(src / f) for f in ("quant_cpu.cpp", "bit_helper.cpp", "sim_helper.cpp")])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (the suite's workers use 1 each on 2 cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_qtorch()
    import qtorch.quant.quant_function as qf
    optimised = qf.quant_cpu
    with tempfile.TemporaryDirectory() as folder:
        plain = unoptimised_kernels(folder)

        setting = common.Setting()
        x = torch.randn(setting.batch_size, 3, 32, 32)
        y = torch.randint(0, 10, (setting.batch_size,))

        def stepper(q8: bool):
            model = common.build(setting, 0)
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            if q8:
                opt = LowPrecision().optimizer(opt)
                LowPrecision().quantize_activations(model)

            def step() -> None:
                opt.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
            return step

        a = torch.randn(setting.batch_size, 64, 16, 16)
        results = {"fp32 step": common.median_s(stepper(False), args.repeats, warmup=1)}
        for label, kernels in (("-O0, as qtorch builds it", plain), ("-O3, earlybird's build", optimised)):
            qf.quant_cpu = kernels
            try:
                results[f"q8 step, {label}"] = common.median_s(stepper(True), args.repeats, warmup=1)
                results[f"quantiser, {label}"] = common.median_s(
                    lambda: qf.block_quantize(a, wl=8, dim=0, rounding="stochastic"),
                    args.repeats, warmup=1)
            finally:
                qf.quant_cpu = optimised
    fp32 = results["fp32 step"]
    print(f"VGG-11 w{setting.width:g}, batch {setting.batch_size}, {args.threads} thread(s), "
          f"median of {args.repeats}; quantiser: block floating point, stochastic, "
          f"{a.numel():,} values")
    for name, secs in results.items():
        ratio = f"{secs / fp32:5.2f}x fp32" if "step" in name else ""
        print(f"  {name:<34} {secs * 1000:8.1f} ms  {ratio}")
    o0, o3 = (results[f"q8 step, {label}"] for label in ("-O0, as qtorch builds it",
                                                          "-O3, earlybird's build"))
    q0, q3 = (results[f"quantiser, {label}"] for label in ("-O0, as qtorch builds it",
                                                            "-O3, earlybird's build"))
    print(f"  -O3 speedup: q8 step {o0 / o3:.2f}x, quantiser {q0 / q3:.2f}x "
          f"(cores: {os.cpu_count()})")


if __name__ == "__main__":
    main()
