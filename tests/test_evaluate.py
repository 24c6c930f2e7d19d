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

from conftest import stage_done
from easlurm import factory
from easlurm.config import load_config, load_run_config, write_config
from easlurm.data.bicubic import bicubic_downscale, bicubic_upscale
from easlurm.evaluate import EvalError, check_test_sets, evaluate_run, main
from easlurm.fuse.job import run_fusion
from easlurm.inference import tensor_to_uint8
from easlurm.metrics import psnr_y, ssim_y
from easlurm.population import MemberMeta, final_folder, write_member
from easlurm.stages.evaluation import read_record as read_eval_record
from easlurm.store import RunDir, sha256_file
from easlurm.tensor_files import load_checkpoint, torch_bytes

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
        meta = MemberMeta(kind="member", cycle=cfg.run.cycles, slot=i, preference=(1 - i / (n - 1), i / (n - 1)),
                          mode="trained", origin="test", done=True)
        write_member(final_folder(cfg, RunDir(run), i), meta,
                     {"G.pt": torch_bytes(g.state_dict()), "D.pt": torch_bytes(d.state_dict())})


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
def small_val(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A val shard folder of three 96×120 crops of real photos (small, so LPIPS and DISTS on CPU cost little)."""
    import skimage.data
    from sklearn.datasets import load_sample_image

    from easlurm.data.shards import build_shards

    hr = tmp_path_factory.mktemp("small_val_hr")
    Image.fromarray(skimage.data.astronaut()[40:136, 150:270]).save(hr / "astronaut.png")
    Image.fromarray(skimage.data.coffee()[150:246, 250:370]).save(hr / "coffee.png")
    Image.fromarray(load_sample_image("china.jpg")[200:296, 300:420]).save(hr / "china.png")
    out = tmp_path_factory.mktemp("small_val") / "val"
    build_shards(hr, out, scale=4)
    return out


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory, demo_shards: Path, small_val: Path,
              crops: Path) -> tuple[Path, dict]:
    """A fused run evaluated on its val shards (the default set) plus the crops folder (via the extra-sets
    argument)."""
    run = _new_run(tmp_path_factory.mktemp("ev") / "run", demo_shards, f"data.train={demo_shards / 'train'}",
                   f"data.val={small_val}")
    run_fusion(run)
    return run, evaluate_run(run, {"crops": str(crops)})


def _csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_one_row_per_model_per_set_with_all_outputs(evaluated):
    run, result = evaluated
    rows = _csv(RunDir(run).eval / "results.csv")
    assert list(rows[0]) == ["set", "model", "preference", "psnr", "ssim", "lpips", "dists", "n_images"]
    models = ["bicubic", "member_0", "member_1", "member_2", "fused"]
    assert [(r["set"], r["model"]) for r in rows] == [(s, m) for s in ("val", "crops") for m in models]
    assert [r["preference"] for r in rows[:5]] == ["", "1:0", "0.5:0.5", "0:1", ""]
    assert {r["n_images"] for r in rows if r["set"] == "val"} == {"3"}
    assert {r["n_images"] for r in rows if r["set"] == "crops"} == {"3"}
    for r in rows:
        assert 10 < float(r["psnr"]) < 60 and 0 < float(r["ssim"]) <= 1, r
        assert 0 <= float(r["lpips"]) < 1 and 0 <= float(r["dists"]) < 1, r
    md = (RunDir(run).eval / "results.md").read_text()
    assert md == result["markdown"]
    assert md.count("### val (3 images") == 1 and md.count("### crops (3 images") == 1
    assert md.count("| fused |") == 2 and md.count("| bicubic | — |") == 2
    assert "| model | preference (w_dist:w_perc) | PSNR-Y (dB) ↑ | SSIM-Y ↑ | LPIPS-alex ↓ | DISTS ↓ |" in md
    with Image.open(RunDir(run).eval / "pareto.png") as im:
        assert im.format == "PNG" and im.size[0] > 2 * im.size[1] - 200  # one panel per set, side by side
    per_image = _csv(RunDir(run).eval / "per_image.csv")
    assert list(per_image[0]) == ["set", "model", "preference", "image", "psnr", "ssim", "lpips", "dists"]
    assert len(per_image) == 2 * 3 * 5
    # The per-set numbers are the means of the per-image numbers.
    for r in rows:
        for metric in ("psnr", "dists"):
            vals = [float(p[metric]) for p in per_image if p["set"] == r["set"] and p["model"] == r["model"]]
            assert float(r[metric]) == pytest.approx(np.mean(vals), abs=1e-3)


def test_folder_set_numbers_match_an_independent_recomputation(evaluated, crops):
    # Independently of easlurm.scoring: the member's and the bicubic baseline's PSNR/SSIM on the Y channel (crop
    # scale), and LPIPS of the border-cropped images (crop scale, as the reference code) with LPIPSMetric directly.
    from easlurm.metrics.lpips import LPIPSMetric

    run, _ = evaluated
    cfg = load_run_config(run)
    s = cfg.data.scale
    g = factory.build_generator(cfg).eval()
    g.load_state_dict(load_checkpoint(final_folder(cfg, RunDir(run), 1) / "G.pt"))
    lp = LPIPSMetric()

    def t(img: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(img[s:-s, s:-s])).permute(2, 0, 1)[None].float() / 255

    got: dict[str, list[tuple[float, float, float]]] = {"member_1": [], "bicubic": []}
    for f in sorted(crops.iterdir()):
        hr = np.asarray(Image.open(f).convert("RGB"))
        hr = hr[: hr.shape[0] // s * s, : hr.shape[1] // s * s]
        lr_u8 = bicubic_downscale(hr, s)
        lr = torch.from_numpy(lr_u8).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            sr = tensor_to_uint8(g(lr))
        for label, out in (("member_1", sr), ("bicubic", bicubic_upscale(lr_u8, s))):
            got[label].append((psnr_y(out, hr, s), ssim_y(out, hr, s), float(lp(t(out), t(hr))[0])))
    rows = _csv(RunDir(run).eval / "results.csv")
    for label, vals in got.items():
        row = next(r for r in rows if r["set"] == "crops" and r["model"] == label)
        assert float(row["psnr"]) == pytest.approx(np.mean([v[0] for v in vals]), abs=1e-4)
        assert float(row["ssim"]) == pytest.approx(np.mean([v[1] for v in vals]), abs=1e-6)
        assert float(row["lpips"]) == pytest.approx(np.mean([v[2] for v in vals]), abs=1e-6)


def test_pareto_front_and_fused_marker_in_the_table(evaluated):
    from easlurm.evo.pareto import pareto_front_mask

    run, result = evaluated
    for name in ("val", "crops"):
        rows = [r for r in result["rows"] if r.set == name and r.is_member]
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
    bicubic = next(r for r in result["rows"] if r.set == "val" and r.model == "bicubic")
    assert acc.Scalars("val/dists/bicubic")[-1].value == pytest.approx(bicubic.metrics["dists"], abs=1e-6)


def test_rerun_rewrites_identical_files_and_its_record_lists_them(evaluated, crops):
    run, _ = evaluated
    out = RunDir(run).eval
    results = ("results.csv", "results.md", "pareto.png", "per_image.csv")
    before = {name: (out / name).read_bytes() for name in results}
    first = read_eval_record(RunDir(run))
    evaluate_run(run, {"crops": str(crops)})
    assert {name: (out / name).read_bytes() for name in results} == before
    assert sorted(p.name for p in out.iterdir()) == sorted([*results, "done.json"])
    rec = read_eval_record(RunDir(run))
    assert rec is not None and first is not None and rec.done
    assert rec.outputs == {name: sha256_file(out / name) for name in results}
    assert rec.sets == ["val", "crops"] and rec.models[0] == "bicubic" and "fused" in rec.models
    assert len(rec.attempts) == len(first.attempts) + 1  # each evaluation is an attempt of the stage
    assert stage_done(run, "eval")
    (out / "results.md").write_text("edited\n")  # an output that no longer matches its record: not done
    assert not stage_done(run, "eval")


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
    assert f"test set 'gone': {tmp_path / 'nope'} does not exist — put the set's HR images there" in msg
    assert "eval.sets.gone (or --sets gone=PATH)" in msg
    assert "test set 'empty'" in msg and "no images found" in msg
    assert "test set 'file'" in msg and "is not a folder" in msg
    assert "'ok'" not in msg
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    with pytest.raises(EvalError, match=r"test set 'broken': .*manifest.json: corrupt shard manifest"):
        evaluate_run(run, {"broken": str(broken)})


def test_cli_prints_the_table_and_plot_path_and_reports_errors(tmp_path, demo_shards, crops):
    run = _new_run(tmp_path / "run", demo_shards, f"eval.sets={{small: {crops}}}", "eval.metrics=[psnr, ssim]",
                   "eval.tile=8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "easlurm.evaluate", "--run", str(run)], capture_output=True,
                         text=True, env=env, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert "### small (3 images" in res.stdout and "LPIPS" not in res.stdout.split("★")[0]
    assert res.stdout.rstrip().endswith(f"pareto plot: {RunDir(run).eval / 'pareto.png'}")
    rows = _csv(RunDir(run).eval / "results.csv")
    assert [r["model"] for r in rows] == ["bicubic", "member_0", "member_1", "member_2"]  # no fusion yet
    assert list(rows[0]) == ["set", "model", "preference", "psnr", "ssim", "n_images"]

    bad = subprocess.run([sys.executable, "-m", "easlurm.evaluate", "--run", str(run), "--sets",
                          f"Set5={tmp_path / 'missing'}"], capture_output=True, text=True, env=env, cwd=REPO)
    assert bad.returncode == 2
    assert bad.stderr.startswith("easlurm.evaluate: error: bad test set: test set 'Set5': ")
    assert len(bad.stderr.strip().splitlines()) == 1


def test_tiled_evaluation_matches_whole_image_within_rounding(tmp_path, demo_shards, crops):
    # The tiny net's receptive field (~5 LR px) is inside the 16 px tile overlap, so tiles change nothing but
    # float rounding.
    whole = _new_run(tmp_path / "whole", demo_shards, f"eval.sets={{small: {crops}}}", "eval.metrics=[psnr, ssim]")
    tiled = _new_run(tmp_path / "tiled", demo_shards, f"eval.sets={{small: {crops}}}", "eval.metrics=[psnr, ssim]",
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


def test_missing_sets_are_one_error_before_any_model_is_loaded(tmp_path, demo_shards):
    # A run without any members yet: the set check must come first, and name every missing set with its path.
    from conftest import TINY

    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"data.demo_dir={demo_shards}", *TINY,
                      f"eval.sets={{Set5: {tmp_path / 'Set5'}, Urban100: {tmp_path / 'U100'}}}"])
    write_config(cfg, tmp_path / "run", argv=["pytest"])
    with pytest.raises(EvalError) as exc:
        evaluate_run(tmp_path / "run")
    msg = str(exc.value)
    with pytest.raises(EvalError) as early:  # what a launcher can check before the run starts
        check_test_sets(cfg)
    assert str(early.value) == msg
    assert msg.startswith("bad test sets: test set 'Set5': ") and "test set 'Urban100': " in msg
    assert str(tmp_path / "Set5") in msg and str(tmp_path / "U100") in msg
    assert msg.count("put the set's HR images there") == 2 and "member" not in msg


def test_score_model_is_the_public_form_of_the_stage_scoring(evaluated, crops):
    from easlurm.evaluate import final_models
    from easlurm.metrics import build_metrics
    from easlurm.scoring import open_test_set, score_model

    run, result = evaluated
    cfg = load_run_config(run)
    entry = next(e for e in final_models(cfg, RunDir(run)) if e.label == "member_2")
    metrics = build_metrics(["psnr", "lpips"], scale=cfg.data.scale)
    mine = score_model(entry.model, open_test_set("crops", crops), cfg.data.scale, metrics, device="cpu")
    bicubic = score_model(None, crops, cfg.data.scale, metrics, device="cpu")  # a path works too
    assert bicubic.set == crops.name
    rows = {r.model: r for r in result["rows"] if r.set == "crops"}
    assert mine.set == "crops" and [im.image for im in mine.images] == ["a_face.png", "b_cup.png", "c_cat.png"]
    for score, label in ((mine, "member_2"), (bicubic, "bicubic")):
        assert list(score.means) == ["psnr", "lpips"] and score.n_images == 3
        assert score.means["psnr"] == pytest.approx(rows[label].psnr, abs=1e-9)
        assert score.means["lpips"] == pytest.approx(rows[label].lpips, abs=1e-9)


def test_evaluation_imports_no_cli_and_no_training_stage():
    # Arrows point down: the evaluation stage and its library modules must not import a CLI module or a training
    # stage (they used easlurm.upscale.super_resolve and easlurm.train.member.pick_device).
    import ast

    for mod in ("evaluate", "scoring", "inference", "runtime", "report", "upscale"):
        tree = ast.parse((REPO / "easlurm" / f"{mod}.py").read_text())
        imported = {(node.module or "") for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
        assert not {m for m in imported if m.lstrip(".").split(".")[0] in ("upscale", "train", "orchestrate")
                    or m.startswith("easlurm.upscale")}, (mod, sorted(imported))


def test_progress_shows_rate_and_eta_on_a_terminal_only(monkeypatch):
    from easlurm import scoring

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    for stream, expect_bar in ((Terminal(), True), (io.StringIO(), False)):
        monkeypatch.setattr(sys, "stderr", stream)
        assert list(scoring._progress(iter(range(4)), 4, "Set5 (3 models)")) == [0, 1, 2, 3]
        text = stream.getvalue()
        assert (("Set5 (3 models)" in text) and ("4/4" in text) and ("img/s" in text)) == expect_bar, text
        assert expect_bar or text == ""
