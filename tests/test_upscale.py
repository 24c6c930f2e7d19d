"""The upscale CLI (python -m easlurm.upscale) on tiny networks and real photo crops."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from easlurm.config import load_config, write_config
from easlurm.models.specs import build_generator
from easlurm.upscale import main

REPO = Path(__file__).resolve().parents[1]
TINY_FLAGS = ["--arch", "msrresnet", "--num-feat", "8", "--num-block", "1", "--scale", "4"]


@pytest.fixture(scope="module")
def lr_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three LR inputs of different sizes and formats (PNG, JPEG, grayscale PNG) cut from real photos."""
    import skimage.data

    d = tmp_path_factory.mktemp("lr")
    Image.fromarray(skimage.data.astronaut()[100:133, 180:221]).save(d / "b_face.png")  # 33 × 41
    Image.fromarray(skimage.data.coffee()[100:124, 200:250]).save(d / "a_cup.jpg", quality=95)  # 24 × 50
    Image.fromarray(skimage.data.camera()[50:80, 60:78]).save(d / "c_gray.png")  # 30 × 18, mode L
    return d


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MSRResNet (receptive field ≈ 5 LR px) with perturbed weights, saved as a plain state dict."""
    torch.manual_seed(5)
    g = build_generator("msrresnet", scale=4, num_feat=8, num_block=1)
    with torch.no_grad():
        for p in g.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("model") / "G.pt"
    torch.save(g.state_dict(), path)
    return path


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        return np.asarray(im)


def test_every_image_is_upscaled_by_scale_with_the_same_stem(lr_dir, tiny_model, tmp_path, capsys):
    out = tmp_path / "sr"
    assert main(["--model", str(tiny_model), "--input", str(lr_dir), "--output", str(out), *TINY_FLAGS]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a_cup.png", "b_face.png", "c_gray.png"]
    for src in sorted(lr_dir.iterdir()):
        with Image.open(src) as im:
            w, h = im.size
        assert _read(out / f"{src.stem}.png").shape == (4 * h, 4 * w, 3)
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(":")[0] for ln in lines[:3]] == ["a_cup.jpg", "b_face.png", "c_gray.png"]  # sorted order
    assert lines[-1] == f"wrote 3 image(s) to {out}"


def test_output_is_the_network_applied_to_the_image(lr_dir, tiny_model, tmp_path):
    out = tmp_path / "sr"
    assert main(["--model", str(tiny_model), "--input", str(lr_dir), "--output", str(out), *TINY_FLAGS]) == 0
    g = build_generator("msrresnet", scale=4, num_feat=8, num_block=1).eval()
    g.load_state_dict(torch.load(tiny_model, weights_only=True))
    lr = np.array(Image.open(lr_dir / "b_face.png").convert("RGB"))
    with torch.no_grad():
        sr = g(torch.from_numpy(lr).permute(2, 0, 1)[None].float() / 255)[0]
    expected = (sr.clamp(0, 1) * 255).round().permute(1, 2, 0).numpy().astype(np.uint8)
    np.testing.assert_array_equal(_read(out / "b_face.png"), expected)


def test_tiled_equals_untiled_within_rounding(lr_dir, tiny_model, tmp_path):
    whole, tiled = tmp_path / "whole", tmp_path / "tiled"
    base = ["--model", str(tiny_model), "--input", str(lr_dir), *TINY_FLAGS]
    assert main([*base, "--output", str(whole)]) == 0
    assert main([*base, "--output", str(tiled), "--tile", "8", "--overlap", "8"]) == 0
    for name in ("a_cup.png", "b_face.png", "c_gray.png"):
        a, b = _read(whole / name).astype(int), _read(tiled / name).astype(int)
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= 1, name  # only float rounding at a .5 boundary can flip a level
        assert np.mean(a == b) > 0.99, name


def test_architecture_from_a_run_config(tmp_path, lr_dir, demo_shards):
    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"data.demo_dir={demo_shards}", "model.arch=rrdbnet",
                                                       "model.num_feat=8", "model.num_block=1",
                                                       "model.num_grow_ch=4", "data.scale=2",
                                                       "data.fitness_tile=32"])
    run = tmp_path / "run"
    write_config(cfg, run)
    from easlurm import factory

    torch.save(factory.build_generator(cfg).state_dict(), tmp_path / "fused.pt")
    out = tmp_path / "sr"
    # A run directory works as well as its config.yaml.
    assert main(["--model", str(tmp_path / "fused.pt"), "--config", str(run), "--input", str(lr_dir),
                 "--output", str(out)]) == 0
    assert _read(out / "b_face.png").shape == (66, 82, 3)


def test_bad_inputs_are_one_clear_error(lr_dir, tiny_model, tmp_path, capsys):
    base = ["--model", str(tiny_model), "--input", str(lr_dir)]
    # Flags that do not match the checkpoint: the file and the mismatch are named.
    assert main([*base, "--output", str(tmp_path / "o1"), "--arch", "msrresnet", "--num-feat", "16",
                 "--num-block", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("easlurm.upscale: error: ") and str(tiny_model) in err and "shape" in err
    assert main([*base, "--output", str(lr_dir), *TINY_FLAGS]) == 2
    assert "is the input folder" in capsys.readouterr().err
    assert main(["--model", str(tiny_model), "--input", str(tmp_path / "none"), "--output", str(tmp_path / "o2"),
                 *TINY_FLAGS]) == 2
    assert "image folder not found" in capsys.readouterr().err
    dup = tmp_path / "dup"
    dup.mkdir()
    Image.new("RGB", (8, 8)).save(dup / "x.png")
    Image.new("RGB", (8, 8)).save(dup / "x.jpg")
    assert main(["--model", str(tiny_model), "--input", str(dup), "--output", str(tmp_path / "o3"),
                 *TINY_FLAGS]) == 2
    assert "same stem" in capsys.readouterr().err and not (tmp_path / "o3").exists()
    with pytest.raises(SystemExit):
        main([*base, "--output", str(tmp_path / "o4")])  # no architecture at all
    with pytest.raises(SystemExit):
        main([*base, "--output", str(tmp_path / "o5"), "--config", "x.yaml", *TINY_FLAGS])


def test_runs_as_a_module(lr_dir, tiny_model, tmp_path):
    out = tmp_path / "sr"
    res = subprocess.run([sys.executable, "-m", "easlurm.upscale", "--model", str(tiny_model), "--input",
                          str(lr_dir), "--output", str(out), "--tile", "16", *TINY_FLAGS], capture_output=True,
                         text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert len(list(out.glob("*.png"))) == 3 and not list(out.glob(".*"))  # no temp files left behind
