"""One record shape for every stage (easlurm.records): the checked reader, and records of the previous version."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from easlurm.config import load_config
from easlurm.errors import CheckpointError
from easlurm.population import MemberMeta
from easlurm.stages.ea import EADone
from easlurm.stages.evaluation import EvalRecord
from easlurm.stages.fuse import FusionMeta
from easlurm.stages.init import InitRecord
from easlurm.stages.pretrain import PretrainRecord

REPO = Path(__file__).resolve().parents[1]
FUSION = {"kind": "fusion", "schema": 1, "iteration": 4, "iters_target": 4, "done": True, "experts_sha256": ["a"],
          "slot_expert": [0, 0], "experts_cycle": 3, "discriminator_from": 1, "attempts": [],
          "sha256": {"fused.pt": "f"}, "size": {"fused.pt": 9}}


def test_every_stage_record_round_trips_through_the_checked_reader():
    records = [PretrainRecord(iteration=3, iters_target=5), InitRecord(iteration=1, iters_target=1, slots=3),
               MemberMeta(kind="member", cycle=1, slot=2, preference=(0.5, 0.5), mode="trained", origin="ea:x",
                          ea_objectives=(0.1, 0.2)),
               EADone(cycle=0, outputs={"fitness.json": "s"}, sizes={"fitness.json": 3}, starts={"00": "t"},
                      hypervolume_initial=1.0, hypervolume_final=2.0, distinct_final=2, evaluations=10),
               FusionMeta.from_dict(FUSION, "meta.json"),
               EvalRecord(outputs={"results.md": "r"}, sizes={"results.md": 5}, sets=["val"], models=["bicubic"])]
    for rec in records:
        d = rec.to_dict()
        assert d["kind"] == rec.kind and d["schema"] == 1 and "files" not in d
        assert type(rec).from_dict(d, "x.json") == rec
    assert records[4].files["sha256"] == {"fused.pt": "f"} and records[4].store["size"] == {"fused.pt": 9}


@pytest.mark.parametrize("change, message", [
    ({"kind": "ea"}, r"^m\.json: not a fusion record \(kind 'ea'\)$"),
    ({"schema": 2}, r"^m\.json: fusion record schema 2, this easlurm reads 1 \(a run made by another easlurm"),
    ({"experts_cycle": None}, r"^m\.json: fusion record lacks experts_cycle$"),
    ({"iteration": "4"}, r"^m\.json: iteration must be <class 'int'>, got '4'$"),
    ({"done": 1}, r"^m\.json: done must be <class 'bool'>, got 1$"),
])
def test_a_bad_record_is_one_error_naming_the_file_and_the_field(change, message):
    d = {**FUSION, **change}
    d = {k: v for k, v in d.items() if v is not None}
    with pytest.raises(CheckpointError, match=message):
        FusionMeta.from_dict(d, "m.json")
    with pytest.raises(CheckpointError, match=r"^m\.json: expected a JSON object, got list$"):
        FusionMeta.from_dict([], "m.json")


def test_records_of_the_previous_version_still_read():
    """A run made before the stage registry resumes: its pretraining record had no schema, the EA's done.json
    called its record files "files", fusion called its averaging images "val_ids"."""
    pre = PretrainRecord.from_dict({"kind": "pretrain", "iteration": 2, "iters_target": 2, "done": True,
                                    "attempts": []}, "p")
    assert pre.done and pre.schema == 1
    ea = EADone.from_dict({"kind": "ea", "schema": 1, "cycle": 0, "files": {"front.png": "s"}, "starts": {},
                           "hypervolume_initial": 1.0, "hypervolume_final": 1.5, "distinct_final": 3,
                           "evaluations": 12, "attempts": []}, "d")
    assert ea.outputs == {"front.png": "s"} and ea.sizes == {} and ea.done
    fusion = FusionMeta.from_dict({**{k: v for k, v in FUSION.items() if k != "average_ids"}, "val_ids": ["a"]}, "f")
    assert fusion.average_ids == ["a"]


def test_a_run_config_of_the_previous_version_loads(tmp_path):
    """easlurm 0.1 wrote every model field for every backbone (num_grow_ch: 32 beside MSRResNet's)."""
    raw = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    raw["model"]["num_grow_ch"] = 32
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    assert load_config(tmp_path / "config.yaml").model.options.num_block == 2
