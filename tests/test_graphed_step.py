"""``adam.cuda_graph`` (easlurm.train.graphed): the member step of every backbone is capturable (it reads nothing back
to the host), and a graphed member takes exactly the eager steps — warm-ups, capture, replays with static buffers,
re-capture after a resume — here with the CPU stand-in for the graph (:class:`Rerun`); the real CUDA graph's speed
and equality are measured by bench/gpu_check.sh section 8 on a GPU."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import TINY
from easlurm import factory
from easlurm.config import load_config, load_run_config
from easlurm.preflight import shrink
from easlurm.reference_rates import reference_rates
from easlurm.runtime import adam
from easlurm.train import member as member_stage
from easlurm.train.graphed import GraphedStep, Rerun, host_reads
from easlurm.train.init import init_population
from easlurm.train.member import MemberStep, MemberTrainee, train_member
from easlurm.train.pretrain import pretrain
from test_members_per_task import _state

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def _cfg(name: str, *overrides: str):
    if name == "tiny":
        return load_config(REPO / "configs" / "tiny.yaml", [*TINY, *overrides])
    real = load_config(REPO / "configs" / f"{name}.yaml", list(overrides))
    return shrink(real, REPO / "data").cfg  # the preflight's sizes, the paper config's networks and losses


def _step(cfg, w=(0.5, 0.5), seed=0) -> MemberStep:
    torch.manual_seed(seed)
    g, d = factory.build_generator(cfg).train(), factory.build_discriminator(cfg).train()
    return MemberStep(cfg, g, d, factory.build_perceptual(cfg), w, adam(g.parameters(), 1e-3, (0.9, 0.99)),
                      adam(d.parameters(), 1e-3, (0.9, 0.99)), CPU)


def _batches(cfg, n: int, seed: int = 1, batch: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    p, s = cfg.data.patch_size, cfg.data.scale
    out = []
    for _ in range(n):
        hr = torch.rand(batch, 3, p, p, generator=gen)
        out.append((torch.nn.functional.avg_pool2d(hr, s), hr))
    return out


@pytest.mark.parametrize("name", ["rrdb", "srresnet", "swinir"])
@pytest.mark.parametrize("w", [(1.0, 0.0), (0.5, 0.5), (0.0, 1.0)])
def test_every_backbones_member_step_reads_nothing_back(name, w):
    cfg = _cfg(name)
    step = _step(cfg, w)
    lr, hr = _batches(cfg, 1)[0]
    step(lr, hr)  # Adam's state exists from here on, as when a graph is captured after the warm-ups
    assert host_reads(lambda: step(lr, hr)) == []


@pytest.mark.parametrize("mix,gan", [("weighted_sum", "vanilla"), ("normalised", "relativistic"),
                                     ("normalised", "vanilla")])
def test_other_mixes_and_gan_losses_read_nothing_back(mix, gan):
    cfg = _cfg("tiny", f"adam.mix={mix}", f"loss.gan_type={gan}")
    step = _step(cfg)
    lr, hr = _batches(cfg, 1)[0]
    step(lr, hr)
    assert host_reads(lambda: step(lr, hr)) == []


def test_the_probe_names_what_a_graph_cannot_hold():
    x = torch.randn(8)

    def bad() -> None:
        float(x.sum())            # a value to the host
        x[x > 0].sum()            # an output shape that depends on the data
        if (x > 5).any():         # a branch on a device value
            pass

    hits = host_reads(bad)
    assert "aten::_local_scalar_dense" in hits and "aten::index (boolean mask)" in hits
    assert hits.count("aten::_local_scalar_dense") >= 2


def _same_modules(a: MemberStep, b: MemberStep) -> None:
    for which in ("g", "d"):
        sa, sb = getattr(a, which).state_dict(), getattr(b, which).state_dict()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), f"{which}.{k}"
    for which in ("opt_g", "opt_d"):
        for pa, pb in zip(getattr(a, which).state.values(), getattr(b, which).state.values(), strict=True):
            for k in pa:
                assert torch.equal(pa[k], pb[k]), f"{which} {k}"


def test_a_graphed_step_takes_the_eager_steps_with_static_outputs():
    cfg = _cfg("tiny")
    eager, inner = _step(cfg), _step(cfg)
    graphed = GraphedStep(inner, Rerun, warmup=2)
    outputs = []
    for it, (lr, hr) in enumerate(_batches(cfg, 6)):
        r_e, sr_e = eager(lr, hr)
        r_g, sr_g = graphed(lr, hr)
        assert torch.equal(sr_e, sr_g), f"iteration {it}: SR"
        for k, v in r_e.scalars().items():
            assert torch.equal(v, r_g.scalars()[k]), f"iteration {it}: {k}"
        _same_modules(eager, inner)
        outputs.append((r_g.l1, sr_g))
        assert graphed.captured == (it >= 2)
    assert (graphed.captures, graphed.replays) == (1, 4)  # 2 warm-ups, then one capture replayed 4 times
    # After the capture the results are the graph's static tensors: the same objects, refilled by every replay.
    assert all(o[0] is outputs[2][0] and o[1] is outputs[2][1] for o in outputs[3:])
    assert outputs[1][0] is not outputs[2][0]


def test_a_new_batch_shape_or_a_load_captures_again():
    cfg = _cfg("tiny")
    step = _step(cfg)
    graphed = GraphedStep(step, Rerun, warmup=1)
    for lr, hr in _batches(cfg, 2):
        graphed(lr, hr)
    assert graphed.captures == 1
    for lr, hr in _batches(cfg, 2, batch=3):  # a graph holds one shape: warm up and capture anew
        graphed(lr, hr)
    assert graphed.captures == 2
    trainee = MemberTrainee("test", step, iter(_batches(cfg, 4)), CPU, graph=graphed)
    trainee.step(0)
    assert graphed.replays == 2
    state = {"G.pt": step.g.state_dict(), "D.pt": step.d.state_dict(),
             "optim.pt": {"g": step.opt_g.state_dict(), "d": step.opt_d.state_dict()}}
    trainee.load_files(state.get)  # loaded tensors replace those the graph wrote: it must not be replayed
    assert not graphed.captured
    trainee.step(1)
    trainee.step(2)
    assert graphed.captures == 3


def test_capturable_adam_is_for_cuda_parameters_only():
    with pytest.raises(ValueError, match="only for CUDA parameters"):
        adam([torch.nn.Parameter(torch.zeros(2))], 1e-3, (0.9, 0.99), capturable=True)


def _started(make_run, overrides, name):
    run = make_run(["adam.iters_per_cycle=7", "adam.checkpoint_every=3", "adam.log_every=2", "adam.image_every=1000",
                    *overrides], name)
    pretrain(run)
    init_population(run)
    return run


def _rerun_graphs(monkeypatch, warmup: int) -> list[GraphedStep]:
    """``adam.cuda_graph`` on this CPU through the stand-in graph (:class:`Rerun`), ``warmup`` eager iterations per
    capture; returns the list every member's GraphedStep is appended to as it is built."""
    steps: list[GraphedStep] = []

    def graphed(step, backend):
        steps.append(GraphedStep(step, backend, warmup=warmup))
        return steps[-1]

    monkeypatch.setattr(member_stage, "graph_backend", lambda cfg, device: Rerun)
    monkeypatch.setattr(member_stage, "GraphedStep", graphed)
    return steps


def test_a_graphed_member_commits_what_an_eager_one_commits_across_a_resume(make_run, monkeypatch, capsys):
    eager = _started(make_run, [], "eager")
    train_member(eager, 0, 1)

    # adam.cuda_graph on CPU runs eagerly, and says so.
    graph_cfg = _started(make_run, ["adam.cuda_graph=true"], "graphed")
    assert load_run_config(graph_cfg).adam.cuda_graph
    assert member_stage.graph_backend(load_run_config(graph_cfg), CPU) is None

    # With the CPU stand-in for the graph: one warm-up, capture, replays; a crash after iteration 5, then a resume
    # from the commit at 3, which loads state, so the graph is captured again.
    steps = _rerun_graphs(monkeypatch, warmup=1)
    real_step = MemberTrainee.step

    def crash_at_5(self, iteration):
        if iteration == 5:
            raise RuntimeError("node lost")
        return real_step(self, iteration)

    monkeypatch.setattr(MemberTrainee, "step", crash_at_5)
    with pytest.raises(RuntimeError, match="node lost"):
        train_member(graph_cfg, 0, 1)
    monkeypatch.setattr(MemberTrainee, "step", real_step)
    capsys.readouterr()
    train_member(graph_cfg, 0, 1)
    out = capsys.readouterr().out
    assert "resuming at iteration 3/7" in out and "(CUDA graph after 1 eager iterations)" in out
    # Replays: iterations 1-4, then 4-6 after the resume (iteration 3 is its warm-up).
    assert [(s.captures, s.replays) for s in steps] == [(1, 4), (1, 3)]
    assert _state(graph_cfg, 0, 1) == _state(eager, 0, 1)  # G, D, both Adam states and the RNG stream, to the bit


def test_eager_reference_rates_do_not_price_a_graphed_run():
    cfg = load_config(REPO / "configs" / "rrdb.yaml")
    assert reference_rates(cfg, {"adam"}) is not None
    graphed = load_config(REPO / "configs" / "rrdb.yaml", ["adam.cuda_graph=true"])
    assert reference_rates(graphed, {"adam"}) is None


def test_k_graphed_members_in_one_task_commit_what_eager_members_commit(make_run, monkeypatch):
    eager = _started(make_run, [], "eager_k")
    for m in (0, 1):
        train_member(eager, 0, m)
    graphed = _started(make_run, ["adam.cuda_graph=true", "adam.members_per_task=2"], "graphed_k")
    steps = _rerun_graphs(monkeypatch, warmup=2)
    train_member(graphed, 0, members=(0, 1))
    assert [(s.captures, s.replays) for s in steps] == [(1, 5), (1, 5)]  # one graph per member, 2 warm-ups each
    for m in (0, 1):
        assert _state(graphed, 0, m) == _state(eager, 0, m), f"member {m}"
