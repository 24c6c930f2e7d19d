"""The run configuration's schema: one typed dataclass per section, with ranges and docs next to each field.

:mod:`easlurm.config` loads YAML into these classes (unknown keys rejected with a suggestion, values checked with
the field named in the error); import them from there. Every knob of the method (DESIGN.md §2) is a field here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .fields import setting as _f
from .models.specs import generator_spec
from .stages import default_resources, get as get_kind
from .stages.kind import StageResources

# ----------------------------------------------------------------------------------------------------------------
# Sections


@dataclass
class RunConfig:
    """Identity and length of the run."""
    name: str = "easlurm"
    seed: int = _f(0, min=0, doc="master seed; every stage derives its own seeds from it")
    cycles: int = _f(22, min=1, max=10_000, doc="number of Adam+EA cycles (reference: 22)")
    root: str = _f("runs", doc="parent folder of new run directories when --run-dir is not given")
    group_shared: bool = _f(False, doc="run directory and files readable/writable by the group (folders 3770: "
                                       "setgid and sticky, files 0660) instead of 0750 and the user's umask")


@dataclass
class DataConfig:
    """Training, fitness and validation data (HDF5 shard folders built by ``python -m easlurm.data``)."""
    train: str | None = _f(None, doc="shard folder of training HR/LR pairs; null with demo: true")
    val: str | None = _f(None, doc="shard folder of validation images (fusion averaging, evaluation)")
    fitness: str | None = _f(None, doc="shard folder the EA fitness tiles come from; null → train")
    demo: bool = _f(False, doc="use the built-in demo photos (built on first use under demo_dir)")
    demo_dir: str = _f("data/demo", doc="where the demo shards are built (relative to the current directory)")
    scale: int = _f(4, min=2, max=8, doc="upscaling factor")
    max_pixels: int | None = _f(None, min=1, max=89_478_485, doc="largest image (in pixels) easlurm decodes — "
                                "checked from the header, before decoding — in evaluation sets and demo photos; "
                                "null → Pillow's limit (89,478,485; `easlurm data build --max-pixels` for shards)")
    patch_size: int = _f(128, min=16, max=4096, doc="HR training patch size in pixels (LR patch = patch_size / scale)")
    num_workers: int = _f(2, min=0, max=256, doc="DataLoader workers per training task")
    fitness_images: int = _f(16, min=1, max=100_000,
        doc="N: distinct source images of the fitness tiles (sorted by source "
        "file name, first N; the sub-images of one photo count once); fewer is an error")
    fitness_tile: int = _f(128, min=16, max=4096, doc="HR size of a fitness tile (non-overlapping grid, row-major)")
    fitness_tile_choice: Literal["reference", "first"] = _f(
        "reference", doc="reference: an image with more than 2K tiles keeps tiles K//2 … K//2+K-1, else all "
        "(K=50: tiles 25-74 of >100, as EA-Adam's crop_EA_patch); first: the first K tiles (top rows)")
    fitness_max_tiles: int = _f(50, min=1, max=100_000, doc="K of fitness_tile_choice (reference: 50)")
    fitness_mean: Literal["image", "tile"] = _f(
        "image", doc="image: objectives are the mean of per-image means (reference); tile: the mean over all tiles")


@dataclass
class ModelConfig:
    """The generator: a backbone of :mod:`easlurm.models.specs` and its options, written flat next to ``arch``
    (``model.num_feat``, …; each backbone has its own, with its defaults — BasicSR's names, so its checkpoints
    load)."""
    arch: str = _f("msrresnet", doc="backbone (easlurm.models.specs.GENERATORS: msrresnet, rrdbnet, swinir)")
    pretrained: str | None = _f(None, doc="PSNR-oriented initial generator (BasicSR checkpoint); null → pretrain stage")
    pretrained_sha256: str | None = _f(None, doc="the pretrained file's full sha256 (64 hex digits), checked before "
                                       "it is loaded; null → only a hash prefix in its file name is checked")
    pretrained_key: Literal["params", "params_ema"] = _f(
        "params", doc="entry of the BasicSR checkpoint to start from (the reference loads params)")
    options: Any = field(default=None, metadata={"inline": "options", "doc": "the backbone's options"})

    def __post_init__(self) -> None:
        if self.options is None:
            self.options = generator_spec(self.arch).default_options()


@dataclass
class DiscriminatorConfig:
    """Per-member VGG-style discriminator (stays with its slot for the whole run)."""
    arch: Literal["vgg_style"] = "vgg_style"
    num_feat: int = _f(64, min=1)
    lr: float = _f(1e-4, min=0, min_exclusive=True)
    betas: list[float] = _f(factory=lambda: [0.9, 0.999])


@dataclass
class PerceptualConfig:
    """VGG feature loss: pre-ReLU features, ImageNet normalisation, L1 between features."""
    net: Literal["auto", "vgg16", "vgg19"] = _f("auto", doc="auto: vgg19 when its weights are staged, else vgg16")
    weights_path: str | None = _f(None, doc="a staged torchvision vgg19-dcbb9e9d.pth / vgg16-397923af.pth")
    layers: dict[str, float] = _f(factory=lambda: {"conv5_4": 1.0})


@dataclass
class LossConfig:
    """Objectives: L_dist = L1; L_perc = perceptual_weight·Perceptual + gan_weight·GAN (DESIGN.md §2)."""
    perceptual_weight: float = _f(1.0, min=0)
    gan_weight: float = _f(0.005, min=0)
    gan_type: Literal["vanilla", "relativistic"] = "vanilla"
    perceptual: PerceptualConfig = field(default_factory=PerceptualConfig)


@dataclass
class PopulationConfig:
    """The population of experts and their preferences (uniform on the simplex (1,0)…(0,1))."""
    size: int = _f(5, min=2, max=1024)
    member0: Literal["trained", "ea_only", "frozen"] = _f(
        "trained", doc="member 0 (pure L1): trained = like every member; ea_only = never Adam-trained, the EA may "
                       "replace it (reference RRDB); frozen = never trained nor replaced (reference SRResNet)")


@dataclass
class AdamConfig:
    """The Adam phase of one member (one Slurm array task)."""
    lr: float = _f(1e-4, min=0, min_exclusive=True)
    betas: list[float] = _f(factory=lambda: [0.9, 0.999])
    batch_size: int = _f(16, min=1, max=65_536)
    iters_per_cycle: int = _f(13000, min=1, max=1_000_000_000, doc="T_Adam generator updates per cycle")
    first_phase_iters: int | None = _f(None, min=1, max=1_000_000_000,
        doc="updates of cycle 0's Adam phase; null → iters_per_cycle "
        "(reference: 9 epochs where later phases have 10)")
    final_phase: bool = _f(True, doc="a last Adam phase after the last EA phase, before fusion (reference)")
    final_phase_iters: int | None = _f(None, min=1, max=1_000_000_000,
        doc="updates of the final Adam phase; null → iters_per_cycle")
    mix: Literal["normalised", "weighted_sum"] = _f(
        "normalised", doc="normalised: EA-Adam's per-tensor normalised gradient mix; weighted_sum: plain "
                          "w_dist·∇L_dist + w_perc·∇L_perc (ESRGAN-style weighted loss, an ablation)")
    checkpoint_every: int = _f(1000, min=1)
    norm_eps: float = _f(1e-7, min=0, min_exclusive=True, doc="ε of the per-tensor gradient normalisation")
    bf16: bool = _f(False, doc="bf16 autocast on CUDA (ignored on CPU)")
    channels_last: bool = _f(False, doc="channels_last memory format on CUDA")
    cuda_graph: bool = _f(False, doc="on CUDA, capture the whole member step in one CUDA graph after 3 eager "
                          "iterations and replay it (same math; ignored on CPU)")
    log_every: int = _f(100, min=1)
    image_every: int = _f(1000, min=1)
    members_per_task: int = _f(1, min=1, max=1024, doc="trained members one array task trains side by side, one "
                               "step each in turn on one GPU (shared frozen perceptual net); 1 → one task per slot")


@dataclass
class PretrainConfig:
    """L1 pretraining of the PSNR-oriented initial generator (used when model.pretrained is null)."""
    iters: int = _f(100000, min=1, max=1_000_000_000)
    lr: float = _f(2e-4, min=0, min_exclusive=True)
    betas: list[float] = _f(factory=lambda: [0.9, 0.99], doc="BasicSR's PSNR-oriented setting")
    batch_size: int = _f(16, min=1, max=65_536)
    checkpoint_every: int = _f(5000, min=1)
    log_every: int = _f(100, min=1)


@dataclass
class EAConfig:
    """The EA phase (DESIGN.md §2): SBX crossover, sparse Gaussian mutation, MOEA/D or NSGA-II selection."""
    generations: int = _f(200, min=1, max=10_000_000, doc="T_EA")
    selection: Literal["moead", "nsga2", "identity"] = _f(
        "moead", doc="moead (reference) | nsga2 (Pareto selection) | identity (no EA: the Adam-only ablation)")
    p_crossover: float = _f(0.9, min=0, max=1)
    p_global_partner: float = _f(0.3, min=0, max=1, doc="probability the partner comes from the whole population")
    sbx_eta: float = _f(20.0, min=0, min_exclusive=True)
    p_mutation: float = _f(0.2, min=0, max=1)
    mutation_rate: float = _f(0.02, min=0, max=1, doc="per-element probability inside a mutated weight tensor")
    mutation_sigma: float = _f(0.03, min=0)
    neighbourhood: int = _f(3, min=1)
    max_replacements: int | None = _f(None, min=1, doc="MOEA/D-DE's n_r: slots one child may replace; null → "
                                                       "unlimited (reference)")
    reset_adam: bool = _f(True, doc="reset generator Adam moments after the EA phase (reference)")
    eval_batch: int = _f(16, min=1, max=65_536, doc="fitness tiles per forward pass")
    batch_children: bool = _f(False, doc="evaluate a generation's children as one batch (stacked weights, one "
                              "perceptual pass); the generation is the sequential one, objectives equal up to float "
                              "rounding")
    checkpoint_every: int = _f(10, min=1, doc="generations between EA-phase checkpoints (also on preemption)")


@dataclass
class FusionConfig:
    """Fusion of the experts into one plain backbone."""
    iters: int = _f(5000, min=1, max=1_000_000_000)
    lr: float = _f(1e-4, min=0, min_exclusive=True, doc="attention-branch learning rate")
    betas: list[float] = _f(factory=lambda: [0.9, 0.999])
    d_lr: float | None = _f(None, min=0, min_exclusive=True, doc="fusion discriminator lr; null → fusion.lr "
                                                                 "(reference)")
    milestones: list[int] = _f(factory=list, doc="iterations at which both learning rates are multiplied by gamma")
    gamma: float = _f(0.5, min=0, min_exclusive=True)
    batch_size: int = _f(16, min=1, max=65_536)
    l1_weight: float = _f(0.01, min=0, doc="λ (0.01 SRResNet, 0.1 RRDB)")
    att_kernel: int = _f(5, min=1, max=63, doc="attention-branch conv kernel (5 SRResNet, 3 RRDB)")
    att_channels: int = _f(100, min=1, max=65_536)
    discriminator_from: int = _f(-1, doc="warm-start D from this member (negative indexes from the end)")
    average_set: str | None = _f(None, doc="shard folder of TRAINING images the attention is averaged over; null → "
                                           "data.train (never an evaluation set)")
    average_images: int = _f(100, min=1, max=1_000_000,
        doc="images of average_set used (reference: 100 DIV2K training images)")
    checkpoint_every: int = _f(1000, min=1)
    log_every: int = _f(100, min=1)
    export: list[Literal["basicsr", "safetensors"]] = _f(
        factory=lambda: ["basicsr", "safetensors"], doc="formats the fused model is also written in (fused.pth: "
        "BasicSR's {params: …}; fused.safetensors), with fused.json describing it; [] → fused.pt only")


#: Names of easlurm.metrics.registry.METRICS (a test keeps the two lists equal; config sits below metrics).
EvalMetric = Literal["psnr", "ssim", "lpips", "dists"]


@dataclass
class EvalConfig:
    """Evaluation on test sets (DESIGN.md §2): a bicubic row plus every final model, BasicSR conventions (uint8
    outputs; PSNR/SSIM on the Y channel with `scale` border pixels cropped)."""
    sets: dict[str, str] = _f(factory=dict, doc="name → folder of HR images or shard folder; empty → data.val")
    metrics: list[EvalMetric] = _f(factory=lambda: ["psnr", "ssim", "lpips", "dists"],
                                   doc="per-image metrics, in table order: psnr and ssim (Y channel), lpips "
                                       "(alex v0.1), dists (easlurm.metrics.registry)")
    perceptual_crop: int | None = _f(None, min=0, doc="px cropped at every border before lpips and dists; null → "
                                                      "data.scale, as the reference code; 0 → the whole image")
    tile: int | None = _f(None, min=8, max=65_536, doc="LR tile size for tiled inference (bounded memory)")


@dataclass
class SlurmConfig:
    """Cluster-wide sbatch settings, then one ``executor.slurm.<kind>`` section of resources per stage kind
    (:mod:`easlurm.stages`; each kind's defaults come from its descriptor)."""
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    array_parallelism: int = _f(64, min=1, max=1_000_000, doc="max array tasks running at once")
    gpu_request: Literal["gres", "gpus-per-node", "gpus"] = _f(
        "gres", doc="how a job asks for its GPU: --gres=gpu:N (gres), --gpus-per-node=N or --gpus=N — what the "
                    "site's scheduler expects (a site profile's setting)")
    modules: list[str] = _f(factory=list, doc="environment modules every job loads first (`module load NAME`, in "
                                              "order), e.g. [cuda/12.4] — a site profile's setting")
    stages: dict[str, StageResources] = field(default_factory=default_resources,
                                              metadata={"inline": "resources", "doc": "resources per stage kind"})

    def resources(self, kind: str) -> StageResources:
        """``executor.slurm.<kind>`` (a kind registered after this config was loaded: its defaults)."""
        if kind in self.stages:
            return self.stages[kind]
        return get_kind(kind).resources

    def __getattr__(self, name: str) -> StageResources:
        # executor.slurm.adam reads as it is written in YAML.
        stages = self.__dict__.get("stages")
        if stages is not None and name in stages:
            res: StageResources = stages[name]
            return res
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")


@dataclass
class LocalConfig:
    """The local executor: the same plan on one machine."""
    max_parallel: int = _f(1, min=1, max=100_000,
        doc="concurrent jobs (Adam-phase members run side by side up to this cap); "
        "each gets cores / jobs side by side threads unless OMP_NUM_THREADS is set")
    gpus: list[int] = _f(factory=list, doc="GPU ids assigned round-robin via CUDA_VISIBLE_DEVICES; empty → CPU")


@dataclass
class ExecutorConfig:
    """How stages are run: Slurm (sbatch job arrays), locally with a concurrency cap, or in-process (debug)."""
    kind: Literal["slurm", "local", "debug"] = "slurm"
    max_retries: int = _f(2, min=0, max=1000,
        doc="resubmissions of a failed task (counted per task, given back when it made "
        "progress) before the launcher stops")
    window: int = _f(0, min=0, doc="cycles kept queued (afterok-chained) while the launcher follows; 0 → the "
                                   "whole chain at once (always so with --detach)")
    poll_s: float = _f(30.0, min=0, min_exclusive=True, doc="seconds between the launcher's looks at Slurm while "
                                                               "it follows a run (each is one squeue or sacct)")
    hold_timeout_min: float = _f(60.0, min=0, doc="give up on a job held (by an admin, REQUEUE_HOLD, bad "
                                                  "constraints, …) for longer than this")
    lease_s: float = _f(120.0, min=30, max=86_400, doc="a stage holds a lease on its output folder, renewed every "
                        "lease_s/4 seconds; a holder silent for lease_s seconds counts as dead")
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    local: LocalConfig = field(default_factory=LocalConfig)


@dataclass
class ContainerConfig:
    """Apptainer image every job runs in (null → the current Python environment)."""
    image: str | None = None
    binary: str = "apptainer"
    binds: list[str] = _f(factory=list, doc="extra bind mounts; the run dir and data folders are bound automatically")
    nv: bool = _f(True, doc="pass --nv (NVIDIA GPUs) to apptainer exec")


@dataclass
class Config:
    """A whole EA-Adam run."""
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    population: PopulationConfig = field(default_factory=PopulationConfig)
    adam: AdamConfig = field(default_factory=AdamConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    ea: EAConfig = field(default_factory=EAConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    container: ContainerConfig = field(default_factory=ContainerConfig)
