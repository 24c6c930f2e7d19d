"""Evaluation of a run (easlurm.evaluate / python -m easlurm.evaluate) on tiny experts and real photo crops."""
from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from easlurm import factory
from easlurm.config import load_config, load_run_config, write_config
from easlurm.data.bicubic import bicubic_downscale
from easlurm.evaluate import EvalError, evaluate_run, main
from easlurm.fuse.job import run_fusion
from easlurm.metrics.psnr_ssim import psnr_y, ssim_y, tensor_to_uint8
from easlurm.store import RunDir, commit_checkpoint, load_checkpoint, torch_bytes

REPO = Path(__file__).resolve().parents[1]


def _members(run: Path) -> None:
    """Three random tiny experts (perturbed so they really differ) as the final population."""
    cfg = load_run_config(run)
    n = cfg.population.size
    for i in range(n):
        torch.manual_seed(40 + i)
        g = factory.build_generator(cfg)
        with torch.no_grad():
            for p in g.parameters():
                p.add_(0.03 * torch.randn_like(p))
        d = factory.build_discriminator(cfg)
        meta = {"kind": "member", "cycle": cfg.run.cycles, "slot": i, "preference": [1 - i / (n - 1), i / (n - 1)],
                "done": False}
        commit_checkpoint(RunDir(run).member(cfg.run.cycles, i),
                          {"G.pt": torch_bytes(g.state_dict()), "D.pt": torch_bytes(d.state_dict())}, meta)


def _new_run(root: Path, demo: Path, *overrides: str) -> Path:
    from conftest import TINY

    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"data.demo_dir={demo}", *TINY, *overrides])
    write_config(cfg, root, argv=["pytest"])
    _members(root)
    return root


@pytest.fixture(scope="module")
def crops(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of three odd-sized PNG crops of real photos (sides not multiples of 4: mod-crop is exercised)."""
    import skimage.data

    out = tmp_path_factory.mktemp("crops")
    Image.fromarray(skimage.data.astronaut()[90:157, 170:245]).save(out / "a_face.png")  # 67 × 75
    Image.fromarray(skimage.data.coffee()[100:150, 200:261]).save(out / "b_cup.png")  # 50 × 61
    Image.fromarray(skimage.data.chelsea()[60:122, 120:170]).save(out / "c_cat.png")  # 62 × 50
    return out


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory, demo_shards: Path, crops: Path) -> tuple[Path, dict]:
    """A fused run evaluated on the default val shards plus the crops folder (via the extra-sets argument)."""
    run = _new_run(tmp_path_factory.mktemp("ev") / "run", demo_shards)
    run_fusion(run)
    return run, evaluate_run(run, {"crops": str(crops)})


def _csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_one_row_per_model_per_set_with_all_outputs(evaluated):
    run, result = evaluated
    rows = _csv(RunDir(run).eval / "results.csv")
    assert list(rows[0]) == ["set", "model", "preference", "psnr", "ssim", "lpips", "n_images"]
    models = ["member_0", "member_1", "member_2", "fused"]
    assert [(r["set"], r["model"]) for r in rows] == [(s, m) for s in ("val", "crops") for m in models]
    assert [r["preference"] for r in rows[:4]] == ["1:0", "0.5:0.5", "0:1", ""]
    assert {r["n_images"] for r in rows if r["set"] == "val"} == {"3"}
    assert {r["n_images"] for r in rows if r["set"] == "crops"} == {"3"}
    for r in rows:
        assert 10 < float(r["psnr"]) < 60 and 0 < float(r["ssim"]) <= 1 and 0 <= float(r["lpips"]) < 1, r
    md = (RunDir(run).eval / "results.md").read_text()
    assert md == result["markdown"]
    assert md.count("### val (3 images") == 1 and md.count("### crops (3 images") == 1
    assert md.count("| fused |") == 2 and "LPIPS-alex" in md
    with Image.open(RunDir(run).eval / "pareto.png") as im:
        assert im.format == "PNG" and im.size[0] > 2 * im.size[1] - 200  # one panel per set, side by side
    per_image = _csv(RunDir(run).eval / "per_image.csv")
    assert len(per_image) == 2 * 3 * 4
    # The per-set numbers are the means of the per-image numbers.
    for r in rows:
        vals = [float(p["psnr"]) for p in per_image if p["set"] == r["set"] and p["model"] == r["model"]]
        assert float(r["psnr"]) == pytest.approx(np.mean(vals), abs=1e-3)


def test_folder_set_numbers_match_an_independent_recomputation(evaluated, crops):
    run, _ = evaluated
    cfg = load_run_config(run)
    s = cfg.data.scale
    g = factory.build_generator(cfg).eval()
    g.load_state_dict(load_checkpoint(RunDir(run).member(cfg.run.cycles, 1) / "G.pt"))
    psnrs, ssims = [], []
    for f in sorted(crops.iterdir()):
        hr = np.asarray(Image.open(f).convert("RGB"))
        hr = hr[: hr.shape[0] // s * s, : hr.shape[1] // s * s]
        lr = torch.from_numpy(bicubic_downscale(hr, s)).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            sr = tensor_to_uint8(g(lr))
        psnrs.append(psnr_y(sr, hr, s))
        ssims.append(ssim_y(sr, hr, s))
    row = next(r for r in _csv(RunDir(run).eval / "results.csv") if r["set"] == "crops" and r["model"] == "member_1")
    assert float(row["psnr"]) == pytest.approx(np.mean(psnrs), abs=1e-4)
    assert float(row["ssim"]) == pytest.approx(np.mean(ssims), abs=1e-6)


def test_pareto_front_and_fused_marker_in_the_table(evaluated):
    from easlurm.evo.pareto import pareto_front_mask

    run, result = evaluated
    for name in ("val", "crops"):
        rows = [r for r in result["rows"] if r.set == name and r.model != "fused"]
        mask = pareto_front_mask(np.array([[-r.psnr, r.lpips] for r in rows]))
        for r, front in zip(rows, mask):
            section = result["markdown"].split(f"### {name}")[1].split("###")[0]
            assert (f"| {r.model} ★ |" in section) == bool(front)


def test_tensorboard_holds_scalars_and_the_figure(evaluated):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, result = evaluated
    acc = EventAccumulator(str(RunDir(run).tb / "eval"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    assert "pareto" in tags["images"]
    fused = next(r for r in result["rows"] if r.set == "crops" and r.model == "fused")
    assert acc.Scalars("crops/psnr/fused")[-1].value == pytest.approx(fused.psnr, abs=1e-4)
    assert acc.Scalars("val/lpips/member_2")[-1].value >= 0


def test_rerun_rewrites_identical_files(evaluated, crops):
    run, _ = evaluated
    out = RunDir(run).eval
    before = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    evaluate_run(run, {"crops": str(crops)})
    after = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    assert after == before and set(before) == {"results.csv", "results.md", "pareto.png", "per_image.csv"}


def test_bad_set_paths_raise_one_error_naming_each(evaluated, tmp_path, crops):
    run, _ = evaluated
    empty = tmp_path / "empty"
    empty.mkdir()
    afile = tmp_path / "x.txt"
    afile.write_text("x")
    with pytest.raises(EvalError) as exc:
        evaluate_run(run, {"gone": str(tmp_path / "nope"), "ok": str(crops), "empty": str(empty),
                           "file": str(afile)})
    msg = str(exc.value)
    assert "test set 'gone'" in msg and "does not exist" in msg
    assert "test set 'empty'" in msg and "no images found" in msg
    assert "test set 'file'" in msg and "is not a folder" in msg
    assert "'ok'" not in msg
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    with pytest.raises(EvalError, match=r"test set 'broken': .*manifest.json: corrupt shard manifest"):
        evaluate_run(run, {"broken": str(broken)})


def test_cli_prints_the_table_and_plot_path_and_reports_errors(tmp_path, demo_shards, crops):
    run = _new_run(tmp_path / "run", demo_shards, f"eval.sets={{small: {crops}}}", "eval.lpips=false",
                   "eval.tile=8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "easlurm.evaluate", "--run", str(run)], capture_output=True,
                         text=True, env=env, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert "### small (3 images" in res.stdout and "LPIPS" not in res.stdout.split("★")[0]
    assert res.stdout.rstrip().endswith(f"pareto plot: {RunDir(run).eval / 'pareto.png'}")
    rows = _csv(RunDir(run).eval / "results.csv")
    assert [r["model"] for r in rows] == ["member_0", "member_1", "member_2"]  # no fusion yet: members only
    assert {r["lpips"] for r in rows} == {""}

    bad = subprocess.run([sys.executable, "-m", "easlurm.evaluate", "--run", str(run), "--sets",
                          f"Set5={tmp_path / 'missing'}"], capture_output=True, text=True, env=env, cwd=REPO)
    assert bad.returncode == 2
    assert bad.stderr.startswith("easlurm.evaluate: error: bad test set: test set 'Set5': ")
    assert len(bad.stderr.strip().splitlines()) == 1


def test_tiled_evaluation_matches_whole_image_within_rounding(tmp_path, demo_shards, crops):
    # The tiny net's receptive field (~5 LR px) is inside the 16 px tile overlap, so tiles change nothing but
    # float rounding.
    whole = _new_run(tmp_path / "whole", demo_shards, f"eval.sets={{small: {crops}}}", "eval.lpips=false")
    tiled = _new_run(tmp_path / "tiled", demo_shards, f"eval.sets={{small: {crops}}}", "eval.lpips=false",
                     "eval.tile=8")
    a = evaluate_run(whole)["rows"]
    b = evaluate_run(tiled)["rows"]
    for x, y in zip(a, b):
        assert x.model == y.model
        assert x.psnr == pytest.approx(y.psnr, abs=0.02) and x.ssim == pytest.approx(y.ssim, abs=1e-3)


def test_sets_argument_parsing():
    from easlurm.evaluate import parse_set_arg

    assert parse_set_arg("Set5=/data/Set5") == ("Set5", "/data/Set5")
    assert parse_set_arg("x=a=b") == ("x", "a=b")
    for bad in ("Set5", "=/data", "Set5=", "a/b=/x"):
        with pytest.raises(EvalError, match="--sets"):
            parse_set_arg(bad)
    with pytest.raises(SystemExit):
        main(["--sets", "x=y"])  # --run is required
