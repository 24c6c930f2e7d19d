"""Section 9 of bench/gpu_check.py: k member processes on one GPU, time-sliced and under CUDA MPS (issue 17 item 7;
the performance review's "zero-code alternative" to k members in one process).

k = 4 RRDB member processes (``easlurm.train.member.build_member``, the config's batch and patch, random batches on
the device, no loader) start together behind a barrier file and each times its own iterations: first as plain
processes sharing the GPU (the driver time-slices them), then — where ``nvidia-cuda-mps-control -d`` starts — under
an MPS daemon (kernels of different processes run concurrently), which is stopped again afterwards. Reported: it/s
per member and their sum per GPU, next to section 1's one member alone. Where MPS cannot start (no binary, no
permission, a compute mode that forbids it) the section says why and keeps the time-sliced numbers.

Under --cpu-smoke: k = 2 tiny members on the CPU, time-sliced only (the code path of the processes and the barrier).

    python bench/_gpu_mps.py --worker SPEC_JSON    # one member process (what the section starts k times)
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _worker(spec: dict[str, Any]) -> None:
    import torch

    from easlurm.config import load_config
    from easlurm.population import preferences
    from easlurm.train.member import build_member

    dev = torch.device(spec["device"])
    torch.set_num_threads(spec.get("threads", 1))
    cfg = load_config(spec["config"], spec["overrides"])
    torch.manual_seed(spec["index"])
    n = cfg.population.size
    tr = build_member(cfg, tuple(preferences(n)[spec["index"] % n]), dev, f"process {spec['index']}")
    b, p, s = cfg.adam.batch_size, cfg.data.patch_size, cfg.data.scale
    hr = torch.rand(b, 3, p, p, device=dev)
    lr = torch.nn.functional.avg_pool2d(hr, s)
    for _ in range(spec["warmup"]):
        tr.s(lr, hr)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    Path(spec["ready"]).write_text("ready")
    go = Path(spec["go"])
    while not go.exists():
        time.sleep(0.005)
    t0 = time.perf_counter()
    for _ in range(spec["iters"]):
        tr.s(lr, hr)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    Path(spec["out"]).write_text(json.dumps({"index": spec["index"], "its_per_s": spec["iters"] / dt, "s": dt}))


def _run_processes(ctx: Any, k: int, spec: dict[str, Any], env: dict[str, str], tag: str,
                   timeout_s: float) -> dict[str, Any]:
    """k worker processes started together; their it/s each and summed."""
    folder = ctx.scratch / f"mps_{tag}"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    go = folder / "go"
    procs, outs, readies = [], [], []
    for i in range(k):
        s = dict(spec, index=i, ready=str(folder / f"ready{i}"), go=str(go), out=str(folder / f"out{i}.json"))
        readies.append(Path(s["ready"]))
        outs.append(Path(s["out"]))
        procs.append(subprocess.Popen([sys.executable, str(HERE / "_gpu_mps.py"), "--worker", json.dumps(s)],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    deadline = time.time() + timeout_s
    try:
        while not all(r.exists() for r in readies):
            if any(pr.poll() not in (None, 0) for pr in procs) or time.time() > deadline:
                raise RuntimeError("a member process did not get ready: "
                                   + " | ".join((pr.communicate(timeout=5)[0] or "")[-400:] for pr in procs
                                                if pr.poll() not in (None, 0)))
            time.sleep(0.02)
        go.write_text("go")
        for pr in procs:
            pr.wait(timeout=max(1.0, deadline - time.time()))
    finally:
        for pr in procs:
            if pr.poll() is None:
                pr.kill()
    failed = [(pr.returncode, (pr.stdout.read() if pr.stdout else "")[-400:]) for pr in procs if pr.returncode]
    if failed:
        raise RuntimeError(f"member processes failed: {failed}")
    its = [json.loads(o.read_text())["its_per_s"] for o in outs]
    return {"k": k, "its_per_s_each": its, "its_per_s_per_member": sum(its) / k, "its_per_s_per_gpu": sum(its)}


def _mps(env: dict[str, str], start: bool) -> str | None:
    """Start (or stop) an MPS control daemon for this user; None on success, else why not."""
    ctl = shutil.which("nvidia-cuda-mps-control")
    if ctl is None:
        return "nvidia-cuda-mps-control not found"
    try:
        if start:
            r = subprocess.run([ctl, "-d"], env=env, capture_output=True, text=True, timeout=20)
        else:
            r = subprocess.run([ctl], input="quit\n", env=env, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None if r.returncode == 0 else f"exit {r.returncode}: {(r.stdout + r.stderr).strip()[-300:]}"


def section_mps(ctx: Any, record: dict[str, Any]) -> None:
    from _gpu_ctx import CONFIGS

    k = 2 if ctx.smoke else 4
    overrides = ctx.overrides("rrdb", ("adam.bf16=false",))
    spec = {"device": ctx.device.type, "config": str(CONFIGS["rrdb"]), "overrides": overrides,
            "warmup": 1 if ctx.smoke else 3, "iters": 2 if ctx.smoke else 20, "threads": 1}
    repo = str(HERE.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([repo, str(HERE), os.environ.get("PYTHONPATH", "")]))
    alone = (ctx.shared.get("member_rows", {}).get("RRDB TF32") or {}).get("its_per_s", {}).get("MemberStep")
    record["alone_its_per_s"] = alone
    budget = 30.0 if ctx.smoke else 45.0
    record["time_sliced"] = _run_processes(ctx, k, spec, env, "sliced", budget)
    ctx.results.put("mps", record)
    if ctx.device.type != "cuda":
        record["mps"] = {"skipped": "no CUDA device"}
        return
    mps_env = dict(env, CUDA_MPS_PIPE_DIRECTORY=str(ctx.scratch / "mps_pipe"),
                   CUDA_MPS_LOG_DIRECTORY=str(ctx.scratch / "mps_log"))
    for key in ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY"):
        Path(mps_env[key]).mkdir(parents=True, exist_ok=True)
    why = _mps(mps_env, start=True)
    if why is not None:
        record["mps"] = {"skipped": why}
        return
    try:
        record["mps"] = _run_processes(ctx, k, spec, mps_env, "mps", budget)
        record["mps"]["vs_time_sliced"] = (record["mps"]["its_per_s_per_gpu"]
                                           / record["time_sliced"]["its_per_s_per_gpu"])
    except RuntimeError as exc:
        record["mps"] = {"failed": str(exc)[-600:]}
    finally:
        stop = _mps(mps_env, start=False)
        if stop is not None:
            record["mps_stop"] = stop


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        _worker(json.loads(sys.argv[2]))
    else:
        sys.exit(__doc__)
