"""Models that leave easlurm (easlurm.export): BasicSR's ``{"params": …}`` .pth, .safetensors and a JSON sidecar,
written by the fusion stage for the fused model and by ``easlurm export`` for any final generator; spandrel (what
chaiNNer and ComfyUI load models with) detects the exported RRDB as ESRGAN and computes what easlurm computes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from easlurm import factory
from easlurm.config import load_config, load_run_config
from easlurm.export import encode, export_run, main as export_main, sidecar
from easlurm.inference import super_resolve
from easlurm.models.srresnet import MSRResNet
from easlurm.store import RunDir, sha256_file
from easlurm.tensor_files import load_verified
from hpc_runs import finished_run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, demo_shards: Path) -> Path:
    return finished_run(tmp_path_factory, demo_shards)


def _image() -> np.ndarray:
    import skimage.data

    return np.ascontiguousarray(skimage.data.astronaut()[120:150, 200:236])  # 30 × 36 uint8 RGB


def test_the_fusion_stage_writes_the_fused_model_in_every_format(run: Path):
    rd = RunDir(run)
    cfg = load_run_config(run)
    fused = load_verified(rd.fusion, "fused.pt")
    params = torch.load(rd.fusion / "fused.pth", weights_only=True)["params"]  # what BasicSR's loader does
    g = factory.build_generator(cfg)
    g.load_state_dict(params, strict=True)
    assert all(torch.equal(params[k], fused[k]) for k in fused)
    from safetensors import safe_open
    from safetensors.torch import load_file

    st = load_file(rd.fusion / "fused.safetensors")
    assert st.keys() == fused.keys() and all(torch.equal(st[k], fused[k]) for k in fused)
    with safe_open(str(rd.fusion / "fused.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["easlurm"])
    assert meta["arch"] == "rrdbnet" and meta["scale"] == 4 and meta["options"]["num_grow_ch"] == 32
    side = json.loads((rd.fusion / "fused.json").read_text())
    assert side["kind"] == "fused" and side["source"] == "fusion/fused.pt"
    assert side["source_sha256"] == sha256_file(rd.fusion / "fused.pt")
    assert side["files"] == {n: sha256_file(rd.fusion / n) for n in ("fused.pth", "fused.safetensors")}
    # They are part of the stage's commit: listed, verified, and the stage is done only with them intact.
    listed = json.loads((rd.fusion / "meta.json").read_text())["sha256"]
    assert {"fused.pth", "fused.safetensors", "fused.json"} <= set(listed)


def test_spandrel_loads_the_exported_rrdb_as_esrgan_and_matches_easlurm(run: Path):
    from spandrel import ImageModelDescriptor, ModelLoader

    rd = RunDir(run)
    desc = ModelLoader().load_from_file(rd.fusion / "fused.pth")
    assert isinstance(desc, ImageModelDescriptor)
    assert desc.architecture.id == "ESRGAN" and desc.scale == 4
    g = factory.build_generator(load_run_config(run))
    g.load_state_dict(load_verified(rd.fusion, "fused.pt"), strict=True)
    img = _image()
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    desc.model.eval()
    with torch.no_grad():
        theirs = desc.model(x)
        ours = g.eval()(x)
    assert (theirs - ours).abs().max().item() <= 1e-5
    # ... and the uint8 images easlurm.upscale writes are what spandrel's output rounds to.
    assert np.array_equal(super_resolve(g, img, 4), np.round(theirs[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255)
                          .astype(np.uint8))


def test_export_cli_writes_the_final_members_with_their_preference(run: Path, tmp_path: Path):
    out = tmp_path / "out"
    assert export_main([str(run), "--what", "members", "--format", "basicsr", "--out", str(out)]) == 0
    cfg = load_run_config(run)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"member_{i:02d}_x4.{ext}" for i in range(cfg.population.size) for ext in ("json", "pth"))
    side = json.loads((out / "member_02_x4.json").read_text())
    assert side["kind"] == "member" and side["slot"] == 2 and side["preference"] == [0.0, 1.0]
    assert side["source"].startswith(f"cycles/{cfg.run.cycles:03d}/") and side["objectives"]["l1"] > 0
    g = factory.build_generator(cfg)
    g.load_state_dict(torch.load(out / "member_02_x4.pth", weights_only=True)["params"], strict=True)
    assert export_main([str(tmp_path / "nope")]) == 2


def test_an_msrresnet_export_has_basicsr_s_key_layout(tmp_path: Path):
    """BasicSR's MSRResNet names (basicsr/archs/srresnet_arch.py): conv_first, body.N.conv1/conv2, upconv1,
    upconv2 (×4), conv_hr, conv_last — so its loader takes the export as is."""
    cfg = load_config(REPO / "configs" / "srresnet.yaml", ["model.num_block=2", "model.pretrained=null",
                                                           "data.demo=true"])
    g = factory.build_generator(cfg)
    files = encode("m", g.state_dict(), sidecar(cfg, "member", "x", "0" * 64), ["basicsr"])
    assert sorted(files) == ["m.json", "m.pth"]
    (tmp_path / "m.pth").write_bytes(files["m.pth"])
    params = torch.load(tmp_path / "m.pth", weights_only=True)["params"]
    layout = [f"{m}.{t}" for m in ("conv_first", "body.0.conv1", "body.0.conv2", "body.1.conv1", "body.1.conv2",
                                   "upconv1", "upconv2", "conv_hr", "conv_last") for t in ("weight", "bias")]
    assert sorted(params) == sorted(layout)
    MSRResNet(num_feat=64, num_block=2, upscale=4).load_state_dict(params, strict=True)


def test_export_refuses_what_does_not_exist(tmp_path: Path, make_run):
    run = make_run()
    with pytest.raises(Exception, match="fusion stage has not finished"):
        export_run(run)
    with pytest.raises(Exception, match="export format gif: unknown"):
        encode("x", {}, {}, ["gif"])
