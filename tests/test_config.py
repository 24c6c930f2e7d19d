"""Config loading: unknown keys, types, ranges, overrides, round trip through the run directory."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from easlurm.config import Config, config_from_dict, load_config, load_run_config, to_dict, write_config
from easlurm.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["srresnet", "rrdb", "tiny"])
def test_shipped_configs_load(name: str) -> None:
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert isinstance(cfg, Config)


def test_reference_settings() -> None:
    rrdb = load_config(CONFIGS / "rrdb.yaml")
    assert rrdb.model.arch == "rrdbnet" and rrdb.model.options.num_block == 23
    assert rrdb.loss.gan_type == "relativistic" and rrdb.adam.lr == 1e-4 and rrdb.fusion.l1_weight == 0.1
    assert rrdb.loss.perceptual.layers == {"conv1_2": .1, "conv2_2": .1, "conv3_4": 1, "conv4_4": 1, "conv5_4": 1}
    assert rrdb.population.member0 == "ea_only"  # never Adam-trained, the EA may replace it (reference RRDB)
    assert rrdb.fusion.lr == 5e-5 and rrdb.fusion.att_kernel == 3
    srr = load_config(CONFIGS / "srresnet.yaml")
    assert srr.loss.gan_type == "vanilla" and srr.adam.lr == 1e-5 and srr.population.member0 == "frozen"
    assert srr.loss.perceptual.layers == {"conv5_4": 1.0} and srr.fusion.att_kernel == 5
    assert srr.fusion.lr == 1e-4 and srr.fusion.l1_weight == 0.01
    for cfg in (rrdb, srr):
        assert cfg.population.size == 5 and cfg.ea.generations == 200 and cfg.ea.sbx_eta == 20
        assert (cfg.ea.p_crossover, cfg.ea.p_mutation, cfg.ea.mutation_rate, cfg.ea.mutation_sigma) == (
            .9, .2, .02, .03)
        assert cfg.loss.gan_weight == 0.005 and cfg.adam.batch_size == 16 and cfg.data.patch_size == 128
        # The reference schedule: 9-epoch first phase, 10-epoch phases, a final 10-epoch phase before fusion.
        assert (cfg.adam.first_phase_iters, cfg.adam.iters_per_cycle, cfg.adam.final_phase,
                cfg.adam.final_phase_iters) == (11925, 13250, True, 13250)
        assert cfg.fusion.d_lr is None  # the fusion D shares the attention lr, as in the reference
        assert cfg.model.pretrained_key == "params" and cfg.loss.perceptual.net == "vgg19"
        assert (cfg.data.fitness_images, cfg.data.fitness_tile, cfg.data.fitness_tile_choice,
                cfg.data.fitness_max_tiles, cfg.data.fitness_mean) == (16, 128, "reference", 50, "image")
        assert sorted(cfg.eval.sets) == ["B100", "Manga109", "Set14", "Set5", "Urban100"]
        assert cfg.fusion.average_set and cfg.fusion.average_set != cfg.data.val


def test_replaced_keys_name_their_successor(tmp_path: Path) -> None:
    p = write(tmp_path, "population: {freeze_first: true}\n")
    with pytest.raises(ConfigError, match=r"population\.freeze_first: no longer a setting; use population\.member0"):
        load_config(p)


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_unknown_key_has_dotted_path_and_suggestion(tmp_path: Path) -> None:
    p = write(tmp_path, "data: {train: x}\nadam:\n  itters_per_cycle: 3\n")
    with pytest.raises(ConfigError, match=r"adam\.itters_per_cycle: unknown key \(did you mean 'iters_per_cycle'\?\)"):
        load_config(p)


def test_unknown_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"modle: unknown key \(did you mean 'model'\?\)"):
        load_config(write(tmp_path, "modle: {arch: rrdbnet}\n"))


def test_unknown_nested_key_deep(tmp_path: Path) -> None:
    p = write(tmp_path, "data: {train: x}\nexecutor: {slurm: {adam: {gpu: 2}}}\n")
    with pytest.raises(ConfigError, match=r"executor\.slurm\.adam\.gpu: unknown key \(did you mean 'gpus'\?\)"):
        load_config(p)


@pytest.mark.parametrize("text,match", [
    ("adam: {batch_size: 2.5}", r"adam\.batch_size: expected an integer, got float 2\.5"),
    ("adam: {bf16: 'yes'}", r"adam\.bf16: expected true/false"),
    ("model: {arch: resnet}", r"model\.arch: unknown backbone 'resnet'.*valid: msrresnet, rrdbnet"),
    ("ea: {selection: nsga}", r"ea\.selection: must be one of .* \(did you mean 'nsga2'\?\)"),
    ("loss: {perceptual: {layers: {conv5_4: x}}}", r"loss\.perceptual\.layers\.conv5_4: expected a number"),
    ("adam: [1, 2]", r"adam: expected a mapping"),
])
def test_wrong_types_name_the_field(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, "data: {train: x}\n" + text + "\n"))


@pytest.mark.parametrize("text,match", [
    ("adam: {lr: 0}", r"adam\.lr: must be > 0, got 0"),
    ("ea: {p_crossover: 1.5}", r"ea\.p_crossover: must be <= 1, got 1\.5"),
    ("population: {size: 1}", r"population\.size: must be >= 2, got 1"),
    ("data: {train: x, patch_size: 30}", r"data\.patch_size: 30 is not a multiple of data\.scale=4"),
    ("adam: {lr: .inf}", r"adam\.lr: must be a finite number, got inf"),
    ("adam: {betas: [0.9, .nan]}", r"adam\.betas\[1\]: must be a finite number, got nan"),
    ("data: {train: x, patch_size: 1000000}", r"data\.patch_size: must be <= 4096, got 1000000"),
    ("executor: {lease_s: 2}", r"executor\.lease_s: must be >= 30, got 2"),
    ("executor: {lease_s: .inf}", r"executor\.lease_s: must be a finite number, got inf"),
    ("loss: {perceptual: {layers: {conv6_1: 1}}}", r"loss\.perceptual\.layers\.conv6_1: unknown VGG layer"),
    ("adam: {betas: [0.9]}", r"adam\.betas: expected two numbers"),
    ("executor: {slurm: {adam: {time_min: 1}}}", r"executor\.slurm\.adam\.time_min: must be >= 3"),
])
def test_out_of_range_values_name_the_field(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, text if text.startswith("data:") else "data: {train: x}\n" + text + "\n"))


def test_bad_yaml_names_file_and_line(tmp_path: Path) -> None:
    p = write(tmp_path, "adam:\n  lr: [1, 2\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: line \d+, column \d+ invalid YAML"):
        load_config(p)


def test_missing_file_and_non_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_set_overrides_are_yaml_scalars() -> None:
    cfg = load_config(CONFIGS / "tiny.yaml", ["adam.lr=2e-4", "ea.selection=nsga2", "population.size=4",
                                              "executor.local.gpus=[0, 1]", "model.pretrained=null",
                                              "loss.perceptual.layers={conv2_2: 0.5}"])
    assert cfg.adam.lr == 2e-4 and cfg.ea.selection == "nsga2" and cfg.population.size == 4
    assert cfg.executor.local.gpus == [0, 1] and cfg.model.pretrained is None
    assert cfg.loss.perceptual.layers == {"conv2_2": 0.5}


def test_set_is_never_evaluated() -> None:
    # A Python expression stays a string: the field then rejects it as the wrong type.
    with pytest.raises(ConfigError, match=r"adam\.iters_per_cycle: expected an integer, got str"):
        load_config(CONFIGS / "tiny.yaml", ["adam.iters_per_cycle=__import__('os').getpid()"])


@pytest.mark.parametrize("override,match", [
    ("adam.lrr=1", r"--set adam\.lrr: unknown key \(did you mean 'lr'\?\)"),
    ("adam", r"expected KEY=VALUE"),
    ("adam.lr.x=1", r"--set adam\.lr\.x: adam\.lr is not a section"),
    ("adam.lr=-3", r"adam\.lr: must be > 0"),
])
def test_bad_overrides(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(CONFIGS / "tiny.yaml", [override])


def test_resolved_config_round_trips_through_run_dir(tmp_path: Path) -> None:
    cfg = load_config(CONFIGS / "rrdb.yaml", ["run.cycles=3"])
    path = write_config(cfg, tmp_path / "run", argv=["easlurm.launch", "--config", "configs/rrdb.yaml"])
    text = path.read_text()
    assert text.startswith("# easlurm ") and "# command: easlurm.launch --config configs/rrdb.yaml" in text
    again = load_run_config(tmp_path / "run")
    assert to_dict(again) == to_dict(cfg)
    assert config_from_dict(yaml.safe_load(text)) == cfg
    assert not [p for p in sorted((tmp_path / "run").iterdir()) if p.name != "config.yaml"]  # no temp files left


# ----------------------------------------------------------------------------------------------------------------
# Config values are data: control characters are refused at load, naming the field (issue 12 item 3).

def _nested(dotted: str, value: object) -> dict:
    keys = dotted.split(".")
    out: dict = {keys[-1]: value}
    for k in reversed(keys[:-1]):
        out = {k: out}
    return out


def _merge(a: dict, b: dict) -> dict:
    for k, v in b.items():
        a[k] = _merge(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
    return a


_BASE = {"data": {"train": "/shards/train"}}

# (dotted field named in the error, the YAML fragment carrying a bad string there)
_FIELDS = [
    ("run.name", lambda s: _nested("run.name", s)),
    ("run.root", lambda s: _nested("run.root", s)),
    ("data.train", lambda s: _nested("data.train", s)),
    ("data.val", lambda s: _nested("data.val", s)),
    ("data.demo_dir", lambda s: _nested("data.demo_dir", s)),
    ("model.pretrained", lambda s: _nested("model.pretrained", s)),
    ("loss.perceptual.weights_path", lambda s: _nested("loss.perceptual.weights_path", s)),
    ("executor.slurm.partition", lambda s: _nested("executor.slurm.partition", s)),
    ("executor.slurm.account", lambda s: _nested("executor.slurm.account", s)),
    ("executor.slurm.qos", lambda s: _nested("executor.slurm.qos", s)),
    ("executor.slurm.adam.extra.constraint", lambda s: _nested("executor.slurm.adam.extra", {"constraint": s})),
    ("executor.slurm.ea.extra key", lambda s: _nested("executor.slurm.ea.extra", {s: "x"})),
    ("container.image", lambda s: _nested("container.image", s)),
    ("container.binary", lambda s: _nested("container.binary", s)),
    ("container.binds[1]", lambda s: _nested("container.binds", ["/ok", s])),
    ("eval.sets.div2k", lambda s: _nested("eval.sets", {"div2k": s})),
    ("eval.sets key", lambda s: _nested("eval.sets", {s: "/data/set"})),
]


@pytest.mark.parametrize("field,fragment", _FIELDS, ids=[f for f, _ in _FIELDS])
def test_newline_in_any_string_field_is_refused_at_load(tmp_path: Path, field: str, fragment) -> None:
    bad = "gpu\n#SBATCH --wrap=touch-pwned"  # what M2's proof of concept injected
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(_merge(yaml.safe_load(yaml.safe_dump(_BASE)), fragment(bad))))
    with pytest.raises(ConfigError) as err:
        load_config(p)
    msg = str(err.value)
    assert msg.startswith(f"{p}: {field}") and "U+000A (LINE FEED)" in msg
    assert "\n" not in msg  # one line: the bad value is shown escaped


@pytest.mark.parametrize("char", ["\r", "\x00", "\t", "\x1b", "\x7f", "\x85", "\u2028", "\u2029"])
def test_every_control_and_line_separator_is_refused(tmp_path: Path, char: str) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(_merge(_BASE.copy(), _nested("executor.slurm.account", f"proj{char}x"))))
    with pytest.raises(ConfigError, match=rf"executor\.slurm\.account: control character U\+{ord(char):04X}"):
        load_config(p)


def test_plain_unicode_is_still_accepted(tmp_path: Path) -> None:
    cfg = load_config(CONFIGS / "tiny.yaml", ["data.demo_dir=/data/démo ünïcode", "eval.sets={'Set5 x4': '/d/s 5'}",
                                              "executor.slurm.adam.extra={mail-user: 'it''s run #3'}"])
    assert cfg.data.demo_dir == "/data/démo ünïcode" and cfg.eval.sets == {"Set5 x4": "/d/s 5"}
    assert cfg.executor.slurm.adam.extra == {"mail-user": "it's run #3"}


@pytest.mark.parametrize("override,match", [
    # a raw newline on the command line (shell $'...'): refused before YAML could fold it into a space
    ("run.name=a\nb", r"--set run\.name: control character U\+000A"),
    # a YAML escape that decodes to a newline
    ('run.name="a\\nb"', r"tiny\.yaml: run\.name: control character U\+000A"),
    ("executor.slurm.adam.extra={'mail-type': \"END\\rX\"}", r"executor\.slurm\.adam\.extra\.mail-type: control"),
    ("run.na\nme=x", r"--set 'run\.na\\nme': control character"),
])
def test_set_overrides_with_control_characters_are_refused(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(CONFIGS / "tiny.yaml", [override])


@pytest.mark.parametrize("extra,match", [
    ({"--constraint": "a100"}, r"key '--constraint' is not an sbatch long option name"),
    ({"constraint=a100": "x"}, r"key 'constraint=a100' is not an sbatch long option name"),
    ({"Constraint": "a100"}, r"key 'Constraint' is not an sbatch long option name"),
    ({"mail type": "END"}, r"key 'mail type' is not an sbatch long option name"),
    ({"job-name": "x"}, r"easlurm sets --job-name itself; use run\.name"),
    ({"job-name": "x"}, r"easlurm sets --job-name itself"),
    ({"job_name": "x"}, r"not an sbatch long option name"),
    ({"gres": "gpu:2"}, r"use executor\.slurm\.<stage>\.gpus"),
    ({"time": "60"}, r"easlurm sets --time itself; use executor\.slurm\.<stage>\.time_min"),
    ({"array": "0-9"}, r"--array itself; use population\.size"),
    ({"dependency": "afterok:1"}, r"--dependency itself; use executor\.window"),
    ({"output": "/tmp/x"}, r"--output itself"),
    ({"error": "/tmp/x"}, r"--error itself"),
    ({"partition": "gpu"}, r"use executor\.slurm\.partition"),
    ({"signal": "USR1@60"}, r"--signal itself"),
    ({"mem-per-cpu": "4G"}, r"use executor\.slurm\.<stage>\.mem_gb"),
    ({"dep": "afterok:1"}, r"key 'dep' is an abbreviation of --dependency"),
    ({"part": "gpu"}, r"key 'part' is an abbreviation of --partition"),
    ({"gpus": "2"}, r"key 'gpus': easlurm sets --gpus itself; use executor\.slurm\.<stage>\.gpus and "
                    r"executor\.slurm\.gpu_request"),
    ({"comment": "x"}, r"key 'comment': easlurm sets --comment itself"),
    ({"constraint": "a100\\b"}, r"\.constraint: 'a100\\\\b' contains a backslash"),
])
def test_sbatch_extra_keys_and_values_are_checked(extra: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=r"executor\.slurm\.fuse\.extra.*" + match):
        load_config(CONFIGS / "tiny.yaml", [f"executor.slurm.fuse.extra={_flow(extra)}"])


def _flow(data: dict) -> str:
    return yaml.safe_dump(data, default_flow_style=True, width=10_000).strip()


def test_ordinary_sbatch_extras_pass() -> None:
    extra = {"constraint": "a100|h100", "mail-type": "END,FAIL", "exclude": "node[01-03]", "reservation": "maint",
             "gpu-bind": "closest"}
    cfg = load_config(CONFIGS / "tiny.yaml", [f"executor.slurm.adam.extra={_flow(extra)}",
                                              "executor.slurm.partition=gpu-a100", "executor.slurm.account=proj_42"])
    assert cfg.executor.slurm.adam.extra == extra


@pytest.mark.parametrize("name", ["a/b", "../escape", "-x", ".hidden", "has space", "semi;colon"])
def test_run_name_is_a_plain_folder_and_job_name(name: str) -> None:
    with pytest.raises(ConfigError, match=r"tiny\.yaml: run\.name: .* must start with a letter or digit"):
        load_config(CONFIGS / "tiny.yaml", [f"run.name='{name}'"])


@pytest.mark.parametrize("override,match", [
    ("data.demo_dir=/data/a,b", r"data\.demo_dir: '/data/a,b' contains ','"),
    ("data.demo_dir=/data/a:b", r"data\.demo_dir: '/data/a:b' contains ':'"),
    ("container.binds=['/scratch/a,b']", r"container\.binds\[0\]: .* contains ','"),
])
def test_paths_apptainer_cannot_bind_are_refused_when_an_image_is_used(override: str, match: str) -> None:
    load_config(CONFIGS / "tiny.yaml", [override])  # fine without a container
    with pytest.raises(ConfigError, match=match):
        load_config(CONFIGS / "tiny.yaml", [override, "container.image=/img/easlurm.sif"])
    # src:dest[:opts] stays allowed in container.binds
    cfg = load_config(CONFIGS / "tiny.yaml", ["container.binds=['/scratch/w:/weights:ro']",
                                              "container.image=/img/easlurm.sif"])
    assert cfg.container.binds == ["/scratch/w:/weights:ro"]


def test_run_group_shared_defaults_off_and_is_typed() -> None:
    assert load_config(CONFIGS / "tiny.yaml").run.group_shared is False
    assert load_config(CONFIGS / "tiny.yaml", ["run.group_shared=true"]).run.group_shared is True
    with pytest.raises(ConfigError, match=r"run\.group_shared: expected true/false"):
        load_config(CONFIGS / "tiny.yaml", ["run.group_shared=2770"])


def test_argv_with_a_newline_cannot_corrupt_the_resolved_config(tmp_path: Path) -> None:
    cfg = load_config(CONFIGS / "tiny.yaml")
    path = write_config(cfg, tmp_path / "run", argv=["easlurm.launch", "--run-dir", "/x\ntouch pwned #"])
    text = path.read_text()
    assert "# command: easlurm.launch --run-dir '/x\\ntouch pwned #'" in text
    assert to_dict(load_run_config(tmp_path / "run")) == to_dict(cfg)


@pytest.mark.parametrize("name", ["x\ntouch pwned #", "fine"])
def test_a_config_with_a_newline_submits_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str], name: str) -> None:
    # Fake Slurm commands record any call; the launcher must fail in load_config, before a plan or a run dir
    # exists. The same launch with a clean name gets as far as planning (so this test can tell the two apart).
    from easlurm import launch
    from easlurm.orchestrate import plan

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "slurm-calls"
    for tool in ("sbatch", "squeue", "sacct", "scontrol"):
        (bin_dir / tool).write_text(f"#!/bin/sh\necho \"$0 $*\" >> {calls}\necho 'Submitted batch job 1'\n")
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    planned: list[object] = []
    monkeypatch.setattr(plan, "build_plan", lambda *a, **k: planned.append(a) or [])
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "manifest.json").write_text("{}")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"run": {"name": name}, "data": {"train": str(shards)},
                                   "executor": {"kind": "slurm"}}))
    run_dir = tmp_path / "run"
    rc = launch.main(["--config", str(cfg), "--run-dir", str(run_dir), "--detach"])
    if name == "fine":
        assert planned and (run_dir / "config.yaml").is_file()
        return
    assert rc == 2
    assert "run.name: control character U+000A" in capsys.readouterr().err
    assert not calls.exists() and not planned and not run_dir.exists()
