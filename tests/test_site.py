"""Site profiles (easlurm.site): the same experiment launched on two clusters differs only where the sites do."""
from __future__ import annotations

from collections import Counter

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from easlurm.config import load_config, load_run_config
from easlurm.errors import ConfigError
from easlurm.launch import prepare_run
from easlurm.orchestrate.plan import build_plan
from easlurm.orchestrate.sbatch import Submission, render
from easlurm.run_record import read, record_launch
from easlurm.site import read_site
from easlurm.store import RunDir

REPO = Path(__file__).resolve().parents[1]
SITE_A = {"executor": {"kind": "slurm", "slurm": {
    "partition": "gpu-alpha", "account": "proj-alpha", "adam": {"extra": {"constraint": "a100"}}}},
    "container": {"image": "/site-a/easlurm.sif"}}
SITE_B = {"executor": {"kind": "slurm", "slurm": {
    "partition": "hopper", "qos": "long", "gpu_request": "gpus-per-node", "modules": ["cuda/12.4"]}},
    "container": {"image": "/site-b/images/easlurm.sif", "binds": ["/lustre"]}}


def _site(tmp_path: Path, name: str, data: dict) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _dry_run(tmp_path: Path, *extra: str, env: dict[str, str] | None = None) -> str:
    res = subprocess.run([sys.executable, "-m", "easlurm.launch", "--config", str(REPO / "configs" / "rrdb.yaml"),
                          "--dry-run", "--run-dir", str(tmp_path / "run"), *extra], capture_output=True, text=True,
                         cwd=REPO, timeout=300, env=env)
    assert res.returncode == 0, res.stderr
    return res.stdout[: res.stdout.index("\n# bill: ")]  # the bill may mention this machine's partitions


def test_one_experiment_on_two_sites_differs_only_in_site_lines(tmp_path):
    a, b = _site(tmp_path, "a", SITE_A), _site(tmp_path, "b", SITE_B)
    out_a = _dry_run(tmp_path, "--site", str(a))
    out_b = _dry_run(tmp_path, "--site", str(b))
    def leaves(v: object) -> list[str]:
        return [w for x in v.values() for w in leaves(x)] if isinstance(v, dict) else \
            [w for x in v for w in leaves(x)] if isinstance(v, list) else [str(v)]

    site_words = set(leaves(SITE_A)) ^ set(leaves(SITE_B))  # what the two sites set differently
    lines_a, lines_b = Counter(out_a.splitlines()), Counter(out_b.splitlines())
    changed = list((lines_a - lines_b) + (lines_b - lines_a))
    assert changed, "the two sites must differ somewhere"
    for body in changed:  # every line one site has and the other has not carries a site's setting
        assert body.startswith(("# site: ", "#   ")) or any(w in body for w in site_words) \
            or body in ("#SBATCH --gpus-per-node=1", "#SBATCH --gres=gpu:1"), body
    # What each profile set is listed, with the profile it came from.
    assert f"# site: {a.resolve()}" in out_a and "#   executor.slurm.partition = gpu-alpha" in out_a
    assert "#SBATCH --partition=gpu-alpha" in out_a and "#SBATCH --constraint=a100" in out_a
    assert "#SBATCH --partition=hopper" in out_b and "#SBATCH --gpus-per-node=1" in out_b
    assert "module load cuda/12.4" in out_b and "--bind /lustre" in out_b
    # The environment variable names the same profile.
    assert _dry_run(tmp_path, env={**os.environ, "EASLURM_SITE": str(b)}) == out_b


def test_the_site_goes_on_top_of_the_experiment_and_below_set(tmp_path):
    site = read_site(_site(tmp_path, "a", {**SITE_A, "executor": {**SITE_A["executor"], "poll_s": 60}}))
    cfg = load_config(REPO / "configs" / "rrdb.yaml", ["executor.slurm.partition=mine"], site=site)
    assert cfg.executor.poll_s == 60
    assert cfg.executor.slurm.partition == "mine" and cfg.executor.slurm.account == "proj-alpha"
    adam = cfg.executor.slurm.adam
    assert adam.extra == {"constraint": "a100"} and (adam.time_min, adam.mem_gb) == (240, 48)  # merged, not replaced
    assert cfg.model.arch == "rrdbnet" and cfg.container.image == "/site-a/easlurm.sif"


def test_a_run_records_its_site(tmp_path, demo_shards):
    (tmp_path / "a.sif").write_bytes(b"image")  # a launch checks that the image exists
    site = read_site(_site(tmp_path, "a", {**SITE_A, "container": {"image": str(tmp_path / "a.sif")}}))
    cfg, run = prepare_run(str(REPO / "configs" / "tiny.yaml"), str(tmp_path / "run"), None,
                           [f"data.demo_dir={demo_shards}"], None, ["test"], echo=lambda m: None, site=site)
    assert load_run_config(run.root).executor.slurm.partition == "gpu-alpha"  # the merged result is the run's config
    record_launch(run, cfg.executor.kind, ["test"], site=site.describe())
    rec = read(run)["launches"][-1]["site"]
    assert rec["path"] == str(site.path) and rec["sha256"] == site.sha256
    assert rec["values"]["executor.slurm.partition"] == "gpu-alpha"
    assert rec["values"]["executor.slurm.adam.extra"] == {"constraint": "a100"}


def test_a_bad_site_profile_is_one_error_naming_it(tmp_path):
    bad = _site(tmp_path, "bad", {"executor": {}, "model": {"arch": "rrdbnet"}})
    with pytest.raises(ConfigError, match=r"site profile .*bad\.yaml: model: not a site setting; a site profile "
                                          r"holds executor and container settings only"):
        read_site(bad)
    typo = read_site(_site(tmp_path, "typo", {"executor": {"slurm": {"partiton": "gpu"}}}))
    with pytest.raises(ConfigError, match=r"site profile .*typo\.yaml: executor\.slurm\.partiton: unknown key "
                                          r"\(did you mean 'partition'\?\)"):
        load_config(REPO / "configs" / "tiny.yaml", site=typo)
    mod = read_site(_site(tmp_path, "mod", {"executor": {"slurm": {"modules": ["cuda; rm -rf ~"]}}}))
    with pytest.raises(ConfigError, match=r"executor\.slurm\.modules\[0\]: 'cuda; rm -rf ~' is not a module name"):
        load_config(REPO / "configs" / "tiny.yaml", site=mod)
    with pytest.raises(ConfigError, match="cannot read it"):
        read_site(tmp_path / "missing.yaml")


def test_the_example_profile_loads_and_renders(tmp_path):
    site = read_site(REPO / "configs" / "sites" / "example.yaml")
    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"data.demo_dir={tmp_path}"], site=site)
    run = RunDir(tmp_path / "run")
    adam = next(s for s in build_plan(cfg, run) if s.kind.name == "adam")
    script = render(cfg, run, Submission(adam, (0, 1)))
    assert "#SBATCH --partition=gpu\n" in script and "#SBATCH --constraint=a100\n" in script
    assert json.dumps(site.values())  # JSON-ready for run.json
