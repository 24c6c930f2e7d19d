"""Extending easlurm: a new stage kind and a new backbone are each one module plus one registry entry
(tests/plugins/), and everything that iterates the registries — the plan, config validation, the dry run, the
bill, status, the factory, inference, ``upscale`` and the preflight — picks them up."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from easlurm import factory, stages
from easlurm.bill import make_bill
from easlurm.config import load_config, load_run_config
from easlurm.errors import ConfigError
from easlurm.inference import super_resolve
from easlurm.leads import signal_leads
from easlurm.models.specs import register_generator, unregister_generator
from easlurm.orchestrate.local import DebugExecutor
from easlurm.orchestrate.plan import build_plan
from easlurm.orchestrate.slurm import SlurmExecutor
from easlurm.status import collect
from easlurm.store import RunDir
from plugins import export_stage, toy_backbone

REPO = Path(__file__).resolve().parents[1]
PAIR = ("population.size=2", "ea.neighbourhood=2")


def test_a_registered_stage_kind_is_planned_configured_rendered_and_billed(tmp_path):
    with stages.registered(export_stage.KIND, after="fuse"):
        cfg = load_config(REPO / "configs" / "tiny.yaml", [f"data.demo_dir={tmp_path}",
                                                            "executor.slurm.export.time_min=7"])
        run = RunDir(tmp_path / "run")
        plan = build_plan(cfg, run)
        assert [s.key for s in plan][-3:] == ["fuse", "export", "eval"]
        assert cfg.executor.slurm.export.time_min == 7 and cfg.executor.slurm.export.gpus == 0  # its defaults
        text = SlurmExecutor(cfg, run, leads=signal_leads(cfg)).describe(plan)
        script = text.split("# ---- sbatch script: export ----", 1)[1]
        assert "#SBATCH --time=7\n" in script and "easlurm.orchestrate.runner" in script
        row = next(s for s in make_bill(cfg).stages if s.kind == "export")
        assert (row.tasks, row.time_min, row.gpus) == (1, 7, 0)
    with pytest.raises(ConfigError, match=r"executor\.slurm\.export: unknown key"):
        load_config(REPO / "configs" / "tiny.yaml", ["executor.slurm.export.time_min=7"])


@pytest.mark.slow
def test_a_registered_stage_kind_runs_in_the_pipeline_and_status_times_it(make_run):
    with stages.registered(export_stage.KIND, after="fuse"):
        run = make_run(["run.cycles=1", "ea.generations=1", "adam.final_phase=false", *PAIR])
        cfg = load_run_config(run)
        ex = DebugExecutor(cfg, RunDir(run), echo=lambda m: None)
        ex.run(build_plan(cfg, RunDir(run)))
        assert [k for k, _ in ex.calls][-3:] == ["fuse", "export", "eval"]
        manifest = json.loads((run / "export" / "manifest.json").read_text())
        fused = json.loads((RunDir(run).fusion / "meta.json").read_text())["sha256"]["fused.pt"]
        assert manifest["fused_sha256"] == fused and manifest["kind"] == "export"
        row = next(r for r in collect(run, slurm=False)["stages"] if r["stage"] == "export")
        assert row["state"] == "COMPLETED" and row["time_source"] == ["record"] and row["gpus_per_task"] == 0


@pytest.fixture
def toynet():
    register_generator(toy_backbone.SPEC)
    yield toy_backbone.SPEC
    unregister_generator(toy_backbone.SPEC.name)


def _toy_config(tmp_path: Path, **options: int) -> Path:
    """configs/tiny.yaml with its model section written for ToyNet (each backbone has its own options)."""
    import yaml

    raw = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    raw["model"] = {"arch": "toynet", **options}
    raw["data"]["demo_dir"] = str(tmp_path / "demo")
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_registered_backbone_is_configured_built_padded_and_upscaled(toynet, tmp_path):
    from easlurm.upscale import main as upscale_main

    path = _toy_config(tmp_path, width=8)
    cfg = load_config(path)
    assert cfg.model.options == toy_backbone.ToyOptions(width=8, depth=2)
    with pytest.raises(ConfigError, match=r"--set model\.widht: unknown key \(did you mean 'width'\?\) \(toynet "
                                          r"options: width, depth\)"):
        load_config(path, ["model.widht=8"])
    with pytest.raises(ConfigError, match=r"model\.width: must be >= 1, got 0"):
        load_config(path, ["model.width=0"])
    with pytest.raises(ConfigError, match=r"model\.num_feat: unknown key .*\(toynet options: width, depth\)"):
        load_config(REPO / "configs" / "tiny.yaml", ["model.arch=toynet"])  # tiny.yaml's options are MSRResNet's
    torch.manual_seed(0)
    g = factory.build_generator(cfg).eval()
    assert isinstance(g, toy_backbone.ToyNet) and g.scale == 4
    # Odd sides: inference pads to the spec's multiple and crops back.
    img = np.random.default_rng(1).integers(0, 256, (13, 10, 3), dtype=np.uint8)
    assert super_resolve(g, img, 4).shape == (52, 40, 3)
    # upscale --arch: the backbone's options are flags.
    from PIL import Image

    (tmp_path / "lr").mkdir()
    Image.fromarray(img).save(tmp_path / "lr" / "a.png")
    torch.save(g.state_dict(), tmp_path / "g.pt")
    args = ["--model", str(tmp_path / "g.pt"), "--input", str(tmp_path / "lr"), "--output", str(tmp_path / "sr")]
    assert upscale_main([*args, "--arch", "toynet", "--width", "8"]) == 0
    assert np.asarray(Image.open(tmp_path / "sr" / "a.png")).shape == (52, 40, 3)
    assert upscale_main([*args, "--arch", "toynet", "--width", "4"]) == 2  # wrong width: the file does not fit


@pytest.mark.slow
def test_a_registered_backbone_passes_the_preflight(toynet, tmp_path):
    """The whole plan — pretraining, Adam phases, EA, fusion of its convs, evaluation — knows nothing of ToyNet."""
    from easlurm.preflight import run_preflight

    lines: list[str] = []
    root = run_preflight(load_config(_toy_config(tmp_path)), tmp_path / "pf", echo=lines.append)
    assert "  model.width: 16 → 4" in lines[0] and "preflight passed" in lines[-1]
    assert (RunDir(root).fusion / "fused.pt").is_file() and "| fused |" in "\n".join(lines)
