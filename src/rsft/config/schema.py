"""The run configuration's dataclasses, whose attribute docstrings are the documentation (the
CLI's help and the YAML reference). Loading and dumping YAML is ``rsft.config.yaml_io``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rsft.errors import RsftError
from rsft.registry import ANSWERS, BACKENDS, EQUIVALENCES, SCORERS, STRATEGIES, TRACKERS, Registry
from rsft.types import SamplingParams

MIXED_PRECISION = ("auto", "bf16", "no")
"""Values of ``train.mixed_precision``."""
REPORT_TO = ("none", "tensorboard", "wandb", "mlflow")
"""Values of ``train.report_to``."""
STOP_RULES = ("share", "beta")
"""The stopping rules of adaptive N (``generation.adaptive.rule``, ``AdaptivePolicy.rule``)."""
ON_ERROR = ("fail", "record")
"""Values of ``scoring.on_error``."""
REFRESH = ("subsample", "rotate")
"""Values of ``rounds.refresh``."""
CONTROL_MODES = ("round", "chain")
"""Values of ``rounds.control_mode``."""
EXECUTORS = ("local", "ray")
"""Values of ``executor``."""


def choices(*values: str) -> dict[str, tuple[str, ...]]:
    """Field metadata naming a string field's valid values: the CLI offers exactly these."""
    return {"choices": values}


def registered(registry: Registry) -> dict[str, Registry]:
    """Field metadata naming the registry whose names the field takes (``rsft.registry``): the CLI's
    help lists them, and the config checks read them."""
    return {"registry": registry}


@dataclass
class TaskConfig:
    """A reasoning-gym task as the prompt source."""

    name: str = "chain_sum"
    """reasoning-gym dataset name."""
    size: int = 32
    """Number of prompts."""
    seed: int = 1
    """Seed of the questions."""
    shot_seed: int = 99
    """Seed of the few-shot examples, shared by every prompt set of the task (train pool and eval)."""
    shots: int = 3
    """Solved examples before each question."""
    options: dict[str, Any] = field(default_factory=dict)
    """Difficulty settings passed to the task's reasoning-gym config."""
    template: str = "Q: {question}\nA:"
    """How one question is written."""
    chat: bool = False
    """Render as a one-message chat prompt instead of plain text."""


@dataclass
class PromptsConfig:
    """Where prompts come from: a file/folder (``path``) or a reasoning-gym ``task``."""

    path: str | None = None
    """JSONL, Parquet, CSV file or a saved datasets folder."""
    split: str | None = None
    """Split of a saved DatasetDict."""
    prompt_field: str = "prompt"
    """Column holding the prompt (text or messages)."""
    messages_field: str = "messages"
    """Column holding chat messages when ``prompt_field`` is absent."""
    answer_field: str | None = "answer"
    """Column holding the reference answer (stored as metadata ``answer``)."""
    task: TaskConfig | None = None
    """A reasoning-gym task instead of a file."""


@dataclass
class GeneratorConfig:
    """One generator: a backend, its model and options."""

    backend: str = field(default="hf", metadata=registered(BACKENDS))
    """Generation backend."""
    model: str = "gemma3-270m"
    """Model path, hub id (offline), served model name (openai), or ``gemma3-270m``."""
    options: dict[str, Any] = field(default_factory=dict)
    """Backend options, e.g. ``batch_size``, ``dtype``, ``base_url``, ``concurrency``."""
    n: int = 0
    """Samples per prompt from this generator when several are mixed (0: all of them)."""


@dataclass
class SamplingConfig:
    """Sampling settings; ``temperature: 0`` is greedy."""

    temperature: float = 1.0
    """Sampling temperature (0: greedy)."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    top_k: int = 50
    """Top-k filter, 0 disables; it also keeps top-p from sorting the whole vocabulary. (Library code
    that builds ``SamplingParams`` itself gets 0 unless it asks.)"""
    max_new_tokens: int = 64
    """Tokens to generate at most per completion."""
    stop: list[str] = field(default_factory=list)
    """Stop strings; on the command line the flag repeats and ``\\n`` means a newline."""
    seed: int = 0
    """Sampling seed (a round's shards each derive their own seed from it)."""


@dataclass
class AdaptiveGenerationConfig:
    """Adaptive N in the generate stage: each prompt samples in growing batches (``min_n``, then
    x ``growth``) and stops once its answers agree, up to ``generation.n``; the cells it did not
    sample are recorded as unsampled (no text, NaN reward, never selected). ``rsft.bon.adaptive``."""

    enabled: bool = False
    """Sample adaptively (``generation.n`` is then the most samples per prompt)."""
    min_n: int = 4
    """Samples in the first batch; no prompt stops with fewer."""
    supermajority: float = 0.6
    """share rule: stop once the leading answer holds at least this fraction of the samples."""
    growth: float = 2.0
    """Each later batch grows a prompt's samples to ceil(growth x samples so far), up to N."""
    rule: str = field(default="share", metadata=choices(*STOP_RULES))
    """Stopping rule: share (supermajority of the votes) or beta (P(leader beats runner-up) >= confidence)."""
    confidence: float = 0.95
    """beta rule: posterior probability that the leading answer beats the runner-up needed to stop."""
    answer: str = field(default="first_line", metadata=registered(ANSWERS))
    """The answer a completion votes for: a built-in extractor or pkg.module:name."""
    equivalence: str = field(default="exact", metadata=registered(EQUIVALENCES))
    """Answers that vote together: a built-in grouping or pkg.module:name (a key function of the answer)."""


@dataclass
class GenerationConfig:
    """How many completions per prompt, from which generator(s), sampled how."""

    n: int = 8
    """Completions per prompt (N)."""
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    """The generator (ignored when ``mix`` is given)."""
    mix: list[GeneratorConfig] = field(default_factory=list)
    """Several generators sharing the N columns; each entry's ``n`` is its share."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    shard_size: int = 64
    """Prompts per shard: each shard is written atomically, and a rerun skips finished shards."""
    adaptive: AdaptiveGenerationConfig = field(default_factory=AdaptiveGenerationConfig)
    """Adaptive N: stop sampling a prompt once its answers agree (off by default)."""


def sampling_params(config: GenerationConfig, seed_offset: int = 0) -> SamplingParams:
    """What a generator is handed for ``config.sampling``, its seed moved by ``seed_offset`` (one per
    shard); raises ValueError on an invalid setting."""
    return sampling_of(config.sampling, seed_offset)


def sampling_of(s: SamplingConfig, seed_offset: int = 0) -> SamplingParams:
    """``SamplingParams`` of a ``SamplingConfig``, its seed moved by ``seed_offset``; raises ValueError
    on an invalid setting."""
    return SamplingParams(
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k,
        max_new_tokens=s.max_new_tokens,
        stop=tuple(s.stop),
        seed=s.seed + seed_offset,
    )


@dataclass
class ScoringConfig:
    """Which scorer and what to do when it fails."""

    scorer: Any = field(default="task", metadata=registered(SCORERS))
    """A built-in scorer (``task``, ``math``, ``regex:PAT``, ``rm:PATH``, ...), ``pkg.module:name``, or a
    mapping such as ``{gate: math, inner: "rm:PATH"}``."""
    options: dict[str, Any] = field(default_factory=dict)
    """Scorer options (e.g. ``batch_size`` for ``rm``)."""
    on_error: str = field(default="fail", metadata=choices(*ON_ERROR))
    """``fail``: a scorer exception stops the stage; ``record``: the pair gets NaN and is counted."""
    pass_threshold: float = 0.5
    """Reward at or above which a completion counts as passing, for the statistics."""


@dataclass
class SelectionConfig:
    """Which completions to keep."""

    strategy: str = field(default="best", metadata={"choices": STRATEGIES, **registered(STRATEGIES)})
    """Which completions to keep (``k``, ``threshold``, ``beta`` and ``seed`` are the strategies' settings)."""
    k: int | None = None
    """How many to keep: ``top_k`` overall; ``k_per_prompt`` and ``rso`` per prompt."""
    threshold: float | None = None
    """Minimum reward (``threshold``, ``k_per_prompt``) or minimum margin (``dpo_pairs``)."""
    dedup: bool = False
    """Drop repeated identical completions of a prompt before selecting."""
    beta: float = 0.5
    """``rso``: keep samples of pi(y) * exp(r(y) / beta): small beta approaches the best per prompt, large
    beta the policy's own samples (``k`` per prompt, default 1)."""
    seed: int = 0
    """``rso``: seed of the acceptance draws (the same seed and rewards keep the same samples)."""


@dataclass
class TrainConfig:
    """How to fine-tune the policy on the selected completions (TRL SFTTrainer)."""

    lora: bool = True
    """Train a LoRA adapter instead of all the weights."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator (the update is scaled by ``lora_alpha / lora_r``)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA branch."""
    lora_target_modules: str | list[str] = "all-linear"
    """Modules that get adapters: ``all-linear`` (every linear layer except the output head) or names."""
    merge: bool = True
    """LoRA: also save the adapter merged into a full checkpoint, so the next round and the generators
    load a plain model folder (the adapter alone goes to ``checkpoint/adapter/``)."""
    learning_rate: float = 1e-4
    """Peak learning rate (linear decay); full fine-tuning usually wants ~10x less than LoRA."""
    epochs: float = 2.0
    """Passes over ``selected.jsonl``."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (overrides ``epochs``)."""
    batch_size: int = 8
    """Rows per device per forward pass."""
    grad_accum: int = 1
    """Forward passes per optimizer step (effective batch = ``batch_size * grad_accum``)."""
    max_length: int | None = 1024
    """Tokens per row at most (prompt + completion); longer rows are truncated at the end."""
    activation_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory (slower), on GPU and CPU alike."""
    mixed_precision: str = field(default="auto", metadata=choices(*MIXED_PRECISION))
    """``bf16`` autocast, ``no`` (float32 maths), or ``auto``: bf16 on a CUDA GPU that supports it, and on
    a CPU with native bf16 for models whose ``dtype: auto`` is bf16 there (the embedded Qwen). The
    weights stay float32 either way."""
    logging_steps: int = 1
    """Optimizer steps between lines of ``train_log.jsonl``."""
    report_to: str = field(default="none", metadata=choices(*REPORT_TO))
    """Experiment tracker for TRL: ``none``, ``tensorboard`` (logs to ``ROUND_DIR/tensorboard/``),
    ``wandb`` or ``mlflow``."""
    seed: int = 0
    """Seed of the LoRA initialisation and the data order."""


@dataclass
class EvalConfig:
    """The held-out eval that gates promotion: prompts the selection never sees, with their own scorer."""

    prompts: PromptsConfig | None = None
    """Held-out prompts (a file or a task with a different seed); None disables the gate."""
    scorer: Any = field(default="task", metadata=registered(SCORERS))
    """Scorer of the eval (may differ from the training scorer, e.g. a checker while training used an RM)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Options of the eval scorer."""
    n: int = 1
    """Samples per held-out prompt; the metric is the mean reward over them."""
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(temperature=0.0))
    """Eval sampling (default greedy)."""
    margin: float = 0.0
    """A round is promoted only if its metric beats the current best by more than this."""
    pass_threshold: float | None = None
    """When set, the metric is accuracy: the fraction of eval samples whose reward is at or above it
    (e.g. 1.0 for reasoning-gym, whose scorers give wrong answers partial credit); else the mean reward."""
    kl_samples: int = 2
    """Completions per held-out prompt sampled from the policy (temperature 1, no filters) to
    estimate KL(policy || base); 0 disables KL tracking."""
    kl_max_new_tokens: int = 32
    """Length of the KL samples."""
    kl_prompts: int | None = None
    """Estimate KL on the first this many held-out prompts only (None: all of them)."""


@dataclass
class TrackingConfig:
    """Experiment trackers of ``rsft run``: one rsft run is one tracked run with the resolved config as
    parameters, the config hash as a tag and every round's metrics (``rsft.tracking``)."""

    report_to: list[str] = field(default_factory=list, metadata=registered(TRACKERS))
    """Trackers besides ``metrics.jsonl`` (always written in the run folder); on the command line
    comma-separated or repeated (``--report-to tensorboard,mlflow``)."""
    project: str = "rsft"
    """Project (W&B, trackio) or experiment (MLflow) the run goes into; the run is named after ``name``."""
    mlflow_tracking_uri: str | None = None
    """MLflow tracking URI (None: ``$MLFLOW_TRACKING_URI``, else a file store in ``RUN_DIR/mlruns``)."""


@dataclass
class RmCheckConfig:
    """Re-validate the reward model at the start of each round (``rsft rm-check`` on fixed pairs) and
    refuse the round when it ranks too few of them right; the report goes to ``ROUND_DIR/rm_check.json``."""

    pairs: str = ""
    """Chosen/rejected JSONL (``prompt``, ``chosen``, ``rejected``; text or conversational), held out
    from whatever the RM was trained on."""
    model: str | None = None
    """The reward model to check (``rm:PATH`` or a folder); None: the ``rm:PATH`` of ``scoring.scorer``
    (or of its ``inner`` scorer)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Options of the reward model scorer (``batch_size``, ``max_length``, ``device``, ``dtype``)."""
    min_accuracy: float = 0.6
    """The round is refused when the fraction of pairs with chosen scored above rejected is below
    this (ties count as wrong)."""
    use_ci_low: bool = False
    """Compare the Wilson 95% lower bound instead of the accuracy: on a few dozen pairs, refuses an RM
    that is only good by luck."""


@dataclass
class RoundsConfig:
    """How rounds follow each other."""

    rounds: int = 1
    """Rounds of generate -> score -> select -> train -> eval."""
    train: bool | None = None
    """Fine-tune on each round's kept set and gate on the held-out eval; False runs one round of data
    generation only (generate, score, select, export). Unset: true when ``rounds`` > 1, as
    ``rsft run --rounds K`` sets it for any K; false with ``rounds`` > 1 is an error."""
    prompts_per_round: int | None = None
    """Prompts drawn from the pool each round (None: all of them every round)."""
    refresh: str = "subsample"
    """``subsample`` (a fresh seeded sample each round) or ``rotate`` (consecutive slices of a seeded
    shuffle, so rounds see different prompts until the pool is used up)."""
    seed: int = 0
    """Seed of the prompt refresh."""
    control: bool = False
    """Also train a random-selection control each round (one random completion per prompt, as many
    rows as the kept set) and evaluate it the same way."""
    control_mode: str = "round"
    """``round``: each round's control starts from the current policy and trains on random completions
    of that round's samples (what selection added this round). ``chain``: the control is a policy of
    its own carried across rounds: round k's control starts from round k-1's control (the base at
    round 0) and trains on one completion it samples itself for as many random prompts of the round
    as RSFT kept (what K rounds of selection added over K rounds of the same training)."""
    rm_check: RmCheckConfig | None = None
    """Check the reward model on held-out preference pairs before each round of ``rsft run`` and stop
    when it falls below ``min_accuracy`` (None: no check)."""

    def __post_init__(self) -> None:
        if self.train is None:
            self.train = self.rounds > 1
        elif not self.train and self.rounds > 1:
            raise RsftError(f"train: false contradicts rounds: {self.rounds} (every round trains): "
                            "drop rounds.train or set rounds.rounds: 1 for one data-only round")


@dataclass
class ActorPoolConfig:
    """One pool of Ray actors (generators or scorers); each actor loads its model once."""

    actors: int = 2
    """Actors in the pool; for ``vllm`` these are the data-parallel engine replicas."""
    num_cpus: float | None = None
    """CPUs reserved per actor (None: 1, or a fraction when the cluster has too few CPUs for every
    actor plus one to spare: whole-CPU actors on a small machine deadlock Ray Data)."""
    num_gpus: float | None = None
    """GPUs per actor (None: ``tensor_parallel_size`` for vllm, 1 for hf and reward models when the
    cluster has GPUs, else 0)."""


@dataclass
class RayConfig:
    """Where and how the ``ray`` executor runs generation and scoring (``pip install 'rsft[ray]'``)."""

    address: str | None = None
    """Ray cluster to join (None: ``$RAY_ADDRESS``, else a local Ray instance on this machine)."""
    generate: ActorPoolConfig = field(default_factory=ActorPoolConfig)
    """The generator actors."""
    score: ActorPoolConfig = field(default_factory=ActorPoolConfig)
    """The scorer actors (sharded independently of generation)."""
    overlap: bool = True
    """``rsft run``: score shard k while shard k+1 generates, as one streaming pipeline."""
    runtime_env: dict[str, Any] = field(default_factory=dict)
    """Ray runtime environment of the workers, e.g. ``{working_dir: ., excludes: [runs/, .venv/]}`` so
    user scorers import; the working dir is zipped to every node: keep run folders and Ray's temp dir out."""


@dataclass(frozen=True)
class ServeConfig:
    """``rsft serve``: where it listens and what a request may ask (the model and voting flags are
    ``rsft bon``'s)."""

    host: str = "127.0.0.1"
    """Address to listen on."""
    port: int = 8000
    """Port."""
    model_name: str | None = None
    """Model id reported to clients (None: ``--model``)."""
    api_key_env: str | None = None
    """Require ``Authorization: Bearer <key>`` with the key read from this environment variable (None: no auth)."""
    n: int | None = None
    """N of a request that gives neither ``n`` nor ``best_of`` (default: 8, or ``max_n`` when that is lower)."""
    max_n: int = 16
    """Largest N (``n`` or ``best_of``) a request may ask."""
    max_tokens: int = 256
    """Largest ``max_tokens`` a request may ask, and the default."""
    max_queue: int = 64
    """Requests allowed to wait; more get 503."""
    batch_window_ms: float = 10.0
    """How long to gather requests into one batch."""
    max_batch_prompts: int = 32
    """Requests per batch at most."""
    max_body_bytes: int = 1_000_000
    """Larger bodies get 413."""
    request_timeout: float = 120.0
    """Seconds before 504."""

    def __post_init__(self) -> None:
        for name in ("n", "max_n", "max_tokens", "max_queue", "max_batch_prompts", "max_body_bytes"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise RsftError(f"serve.{name}: must be >= 1, got {getattr(self, name)}")
        if self.n is not None and self.n > self.max_n:
            raise RsftError(f"serve.n: {self.n} exceeds serve.max_n {self.max_n}")

    @property
    def default_n(self) -> int:
        """The N of a request without ``n`` or ``best_of``: ``n``, else 8 capped at ``max_n``."""
        return self.n if self.n is not None else min(8, self.max_n)


@dataclass(frozen=True)
class RewardServerConfig:
    """``rsft serve-reward``: where the reward server listens and what a request may send (the scorer
    flags are the run config's ``scoring`` ones)."""

    host: str = "127.0.0.1"
    """Address to listen on."""
    port: int = 8001
    """Port."""
    api_key_env: str | None = None
    """Require ``Authorization: Bearer <key>`` with the key read from this environment variable (None: no auth)."""
    max_pairs: int = 4096
    """Most (prompt, completion) pairs one request may send."""
    max_queue: int = 64
    """Requests allowed to wait; more get 503."""
    max_body_bytes: int = 16_000_000
    """Larger bodies get 413."""
    request_timeout: float = 300.0
    """Seconds before 504."""

    def __post_init__(self) -> None:
        for name in ("max_pairs", "max_queue", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise RsftError(f"serve-reward.{name}: must be >= 1, got {getattr(self, name)}")


@dataclass
class SweepConfig:
    """``rsft sweep``: a grid over N, temperature, keep threshold and epochs (a missing list: the base
    config's single value). One generation per temperature at the largest N serves every cell."""

    n: list[int] | None = None
    """Samples per prompt used for selection (the first n of the N_max generated per prompt)."""
    temperature: list[float] | None = None
    """Sampling temperatures of the training generations (one generation each)."""
    threshold: list[float | None] | None = None
    """Keep thresholds on the best reward of a prompt; null keeps the best whatever its reward."""
    epochs: list[float] | None = None
    """Training epochs; each trains a checkpoint from the base policy on the cell's kept set."""


@dataclass
class RunConfig:
    """One run: prompts -> generate -> score -> select -> export."""

    name: str = "run"
    """Run folder name under ``out``."""
    out: str = "runs"
    """Parent folder of run folders."""
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    rounds: RoundsConfig = field(default_factory=RoundsConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """Experiment trackers (``metrics.jsonl`` always; TensorBoard, MLflow, trackio, W&B on request)."""
    executor: str = "local"
    """Where generation and scoring shards run: ``local`` (this process) or ``ray`` (actor pools on a
    Ray cluster, see ``ray``); the artifacts are the same either way."""
    ray: RayConfig = field(default_factory=RayConfig)
    """Settings of the ``ray`` executor."""
    sweep: SweepConfig | None = None
    """The grid of ``rsft sweep`` (ignored by ``rsft run``)."""

    @property
    def run_dir(self) -> Path:
        return Path(self.out) / self.name


