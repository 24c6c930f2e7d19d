"""Which tensors the EA evolves, per backbone (easlurm.evo.genes): MSRResNet/RRDBNet exactly as before, SwinIR's conv
and linear weights only, its buffers out of every genome — from the operators up to the EA job's files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from easlurm import factory
from easlurm.config import load_config, write_config
from easlurm.errors import EaslurmError
from easlurm.evo.evolve import make_child
from easlurm.evo.genes import gene_plan
from easlurm.evo.job import run_ea
from easlurm.models.specs import build_generator, generator_spec
from easlurm.population import (
    MemberMeta, after_adam, member_file, preferences, read_member, slot_mode, write_member,
)
from easlurm.preflight import tiny_overrides
from easlurm.store import RunDir
from easlurm.tensor_files import torch_bytes

REPO = Path(__file__).resolve().parents[1]
TINY = generator_spec("swinir").tiny


def _swinirs(n: int = 3) -> list[nn.Module]:
    out = []
    for seed in range(n):
        torch.manual_seed(10 + seed)
        out.append(build_generator("swinir", **TINY))
    return out


def _layer_weight_keys(model: nn.Module) -> list[str]:
    """The rule written out by module type: the weight of every Conv2d and Linear, in state-dict order."""
    names = {f"{n}.weight" for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)}
    return [k for k in model.state_dict() if k in names]


def test_float_tensors_rule_is_the_old_behaviour() -> None:
    g = build_generator("msrresnet", num_feat=8, num_block=1)
    plan = gene_plan(g, generator_spec("msrresnet").ea_genes)
    sd = g.state_dict()
    assert plan.rule == "float_tensors" and plan.buffers == () and plan.mutation is None
    assert plan.crossover == tuple(sd)  # every entry of MSRResNet is a float parameter: weights and biases
    assert plan.genome(sd) == sd and plan.complete(sd) == sd
    assert generator_spec("rrdbnet").ea_genes == "float_tensors"


def test_a_float_tensors_plan_draws_bit_identical_children() -> None:
    """The job now always passes its backbone's plan; for MSRResNet that must change no bit of any child."""
    genomes = []
    for seed in range(3):
        torch.manual_seed(seed)
        genomes.append(build_generator("msrresnet", num_feat=8, num_block=1).state_dict())
    plan = gene_plan(build_generator("msrresnet", num_feat=8, num_block=1))
    ea = load_config(REPO / "configs" / "tiny.yaml", ["ea.p_crossover=1", "ea.p_mutation=1"]).ea
    for seed in range(4):
        old, old_ops, _ = make_child(1, genomes, ea, [0, 1, 2], seed)
        new, new_ops, _ = make_child(1, genomes, ea, [0, 1, 2], seed, plan)
        assert old_ops == new_ops and list(old) == list(new)
        assert all(torch.equal(old[k], new[k]) for k in old)


def test_swinir_genes_are_conv_and_linear_weights_and_buffers_stay_out() -> None:
    model = _swinirs(1)[0]
    plan = gene_plan(model, generator_spec("swinir").ea_genes)
    sd = model.state_dict()
    assert list(plan.crossover) == _layer_weight_keys(model) == list(plan.mutation or ())
    assert len(plan.crossover) == 2 * 2 * 4 + 2 + 3  # 4 linears per block, a conv per group, first/body/upsample
    assert not any(k.endswith(("bias", "bias_table", "norm1.weight", "norm2.weight", "norm.weight"))
                   for k in plan.crossover)
    assert sorted(plan.buffers) == sorted(k for k in sd if k.endswith(("relative_position_index", "attn_mask")))
    genome = plan.genome(sd)
    assert not set(plan.buffers) & set(genome) and len(genome) + len(plan.buffers) == len(sd)
    back = plan.complete(genome)
    assert list(back) == list(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    tampered = dict(sd, **{plan.buffers[1]: sd[plan.buffers[1]] + 1})
    with pytest.raises(EaslurmError, match=f"G.pt: buffer '{plan.buffers[1]}' differs"):
        plan.check_buffers(tampered, "G.pt")


@pytest.mark.parametrize("p_crossover, p_mutation", [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0)])
def test_swinir_children_differ_from_their_parent_only_in_the_evolvable_tensors(p_crossover, p_mutation) -> None:
    experts = _swinirs()
    plan = gene_plan(experts[0], "layer_weights")
    genomes = [plan.genome(e.state_dict()) for e in experts]
    ea = load_config(REPO / "configs" / "tiny.yaml", [f"ea.p_crossover={p_crossover}", f"ea.p_mutation={p_mutation}",
                                                       "ea.mutation_rate=0.2"]).ea
    evolvable = set(plan.crossover)
    for i in range(3):
        child, ops, partner = make_child(i, genomes, ea, [0, 1, 2], 100 + i, plan)
        assert [o["op"] for o in ops] == ["sbx"] * (p_crossover == 1) + ["mutation"] * (p_mutation == 1)
        assert list(child) == list(genomes[i])
        changed = {k for k in child if not torch.equal(child[k], genomes[i][k])}
        assert changed == evolvable  # every weight moved (u ≠ 0.5; rate 0.2 hits every tensor) …
        for k in set(child) - evolvable:  # … and biases, norms, bias tables are the parent's own, bit for bit
            assert torch.equal(child[k], genomes[i][k]), k
        if partner is not None:
            assert len(ops[0]["u"]) == len(evolvable)  # one SBX draw per weight tensor, none for anything else


def _swinir_run(root: Path, demo: Path, *overrides: str, n: int = 3) -> RunDir:
    """A tiny SwinIR run whose cycle-1 members are written (random generators of distinct seeds)."""
    base = load_config(REPO / "configs" / "swinir.yaml")
    cfg = load_config(REPO / "configs" / "swinir.yaml", [
        *tiny_overrides(base), "data.demo=true", f"data.demo_dir={demo}", "data.train=null", "data.val=null",
        "model.pretrained=null", "loss.perceptual.net=auto", "loss.perceptual.layers={conv2_2: 1.0}",
        f"population.size={n}", "ea.eval_batch=4", *overrides])
    run = RunDir(root)
    root.mkdir(parents=True, exist_ok=True)
    write_config(cfg, root, argv=["test"])
    for i, pref in enumerate(preferences(n)):
        torch.manual_seed(200 + i)
        files = {"G.pt": torch_bytes(factory.build_generator(cfg).state_dict()),
                 "D.pt": torch_bytes(factory.build_discriminator(cfg).state_dict())}
        folder, kind = after_adam(cfg, run, 1, i)  # swinir.yaml's member 0 is ea_only: its start entry
        meta = MemberMeta(kind=kind, cycle=1, slot=i, preference=pref, mode=slot_mode(cfg, i), origin="test",
                          iteration=4, iters_target=4, sample_index=8, done=True)
        write_member(folder, meta, files)
    return run


def test_the_swinir_ea_job_writes_children_that_differ_only_in_the_evolvable_tensors(demo_shards, tmp_path):
    run = _swinir_run(tmp_path / "run", demo_shards, "ea.generations=1", "ea.p_crossover=1", "ea.p_mutation=1",
                      "ea.mutation_rate=0.2", "ea.selection=nsga2", "run.seed=3")
    run_ea(run.root, 1)
    model = factory.build_generator(load_config(run.root / "config.yaml"))
    evolvable = set(_layer_weight_keys(model))
    rows = [json.loads(line) for line in (run.ea(1) / "lineage.jsonl").read_text().splitlines()]
    written = [r for r in rows if "checkpoint" in r]
    assert written, "the seed should let at least one child into the next cycle"
    for r in written:
        child = torch.load(run.root / r["checkpoint"], weights_only=True)
        parent = torch.load(run.root / r["parents"][0]["checkpoint"], weights_only=True)
        model.load_state_dict(child, strict=True)  # the full state dict: buffers put back
        assert list(child) == list(parent)
        changed = {k for k in child if not torch.equal(child[k], parent[k])}
        assert changed == evolvable, r["id"]
        assert len(r["operators"][0]["u"]) == len(evolvable)
    for j in range(3):  # every start entry (new or carried) loads into the configured network
        path = member_file(run.start(2, j), read_member(run.start(2, j)), "G.pt").path
        model.load_state_dict(torch.load(path, weights_only=True), strict=True)
    assert np.isfinite(json.loads((run.ea(1) / "fitness.json").read_text())["final"]).all()
