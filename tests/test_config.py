"""Config loading: unknown keys, types, ranges, overrides, round trip through the run directory."""
from __future__ import annotations

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
    assert rrdb.model.arch == "rrdbnet" and rrdb.model.num_block == 23
    assert rrdb.loss.gan_type == "relativistic" and rrdb.adam.lr == 1e-4 and rrdb.fusion.l1_weight == 0.1
    assert rrdb.loss.perceptual.layers == {"conv1_2": .1, "conv2_2": .1, "conv3_4": 1, "conv4_4": 1, "conv5_4": 1}
    srr = load_config(CONFIGS / "srresnet.yaml")
    assert srr.loss.gan_type == "vanilla" and srr.adam.lr == 1e-5 and srr.population.freeze_first
    assert srr.loss.perceptual.layers == {"conv5_4": 1.0} and srr.fusion.att_kernel == 5
    for cfg in (rrdb, srr):
        assert cfg.population.size == 5 and cfg.ea.generations == 200 and cfg.ea.sbx_eta == 20
        assert (cfg.ea.p_crossover, cfg.ea.p_mutation, cfg.ea.mutation_rate, cfg.ea.mutation_sigma) == (
            .9, .2, .02, .03)
        assert cfg.loss.gan_weight == 0.005 and cfg.adam.batch_size == 16 and cfg.data.patch_size == 128


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
    ("model: {arch: resnet}", r"model\.arch: must be one of 'msrresnet', 'rrdbnet', got 'resnet'"),
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
    ("loss: {perceptual: {layers: {conv6_1: 1}}}", r"loss\.perceptual\.layers\.conv6_1: unknown VGG layer"),
    ("adam: {betas: [0.9]}", r"adam\.betas: expected two numbers"),
    ("executor: {slurm: {adam: {time_min: 1}}}", r"executor\.slurm\.adam\.time_min: must be >= 3"),
])
def test_out_of_range_values_name_the_field(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, "data: {train: x}\n" + text + "\n"))


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
