"""The recipe schema: one dataclass per YAML section. Field defaults are alignkit's defaults; `Literal` fields list
the allowed values, which validation reports in its errors. Objective parameters live in each objective's own
dataclass (see `alignkit.objectives`), so `objective:` is checked against the chosen objective."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class RunConfig:
    name: str = "run"
    output_dir: str | None = None  # default: runs/<name>
    seed: int = 0
    storage_path: str | None = None  # checkpoints (local dir, NFS, s3://...); default: <output_dir>/checkpoints
    # null: a fresh run (earlier checkpoints are kept, not used); auto: continue from the latest checkpoint of this
    # run name in storage_path; or a path to one checkpoint directory.
    resume: str | None = None
    # An output directory that already holds a run is refused unless this is true: then the earlier run's files are
    # replaced, but only once this run finishes (a failed run restores them). See alignkit/rundir.py.
    overwrite: bool = False
    # metrics.jsonl is always written; these trackers get the same records and the resolved recipe (rank 0)
    loggers: list[Literal["jsonl", "tensorboard", "wandb", "mlflow"]] = field(default_factory=lambda: ["jsonl"])
    project: str = "alignkit"  # the W&B project / the MLflow experiment (a sweep's trials: run.group)
    group: str | None = None  # sweeps set it to the sweep's name: its trials are grouped in W&B and MLflow


@dataclass
class LoraConfig:
    """LoRA adapters through PEFT (`model.lora`; null = full fine-tuning)."""
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    # module names or PEFT's "all-linear" (every linear layer but the output head)
    target_modules: list[str] | str = "all-linear"
    modules_to_save: list[str] = field(default_factory=list)  # modules trained in full beside the adapters
    load_in_4bit: bool = False  # QLoRA (a 4-bit base): refused for now, see config/loader.py


@dataclass
class ModelConfig:
    path: str = "builtin:smollm2-135m-instruct"  # HF hub id, local directory, or builtin:<name>
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False
    # the attention kernel: auto = FlashAttention-2 on a CUDA GPU when the flash-attn package is installed, else
    # PyTorch's SDPA; eager is the reference implementation (slow, but returns attention weights)
    attn_implementation: Literal["auto", "sdpa", "flash_attention_2", "eager"] = "auto"
    lora: LoraConfig | None = None  # LoRA adapters; the reference is the same model with its adapters disabled


@dataclass
class ReferenceConfig:
    # precompute: one pass over the training data before training, log-probs kept per example (no second model in
    # memory); live: a frozen copy runs beside the policy; none: reference-free; auto: precompute when the
    # objective needs a reference, else none.
    mode: Literal["auto", "precompute", "live", "none"] = "auto"
    path: str | None = None  # default: the starting policy (model.path)


@dataclass
class DataConfig:
    train: str = ""  # builtin:<name> | path to .jsonl/.json/.parquet | hub dataset id
    eval: str | None = None  # same forms; None = no held-out evaluation
    train_split: str = "train"
    eval_split: str = "test"
    hub_config: str | None = None  # the `name` argument of datasets.load_dataset for hub datasets
    train_size: int | None = None  # keep the first N rows (after validation); None = all
    eval_size: int | None = None
    max_length: int = 512  # prompt + completion tokens
    max_prompt_length: int = 256
    # Prompts longer than max_prompt_length keep their last tokens (the question usually sits at the end);
    # completions are then cut at the end so that prompt + completion <= max_length.
    truncation_mode: Literal["keep_end", "keep_start"] = "keep_end"
    chat_template: Literal["auto", "none"] = "auto"  # auto: conversational rows use the tokenizer's template
    on_bad_row: Literal["error", "skip"] = "error"
    seed: int = 0  # seed of built-in dataset generation
    # Unlearning objectives that use retain data (grad_diff, npo_rt, ...): its source and split (same forms as train).
    retain: str | None = None
    retain_split: str = "train"
    retain_size: int | None = None
    # IdkDPO / answer preservation: "I don't know" answers (JSONL {"text"} rows or a JSON list); null = built-in set
    idk_answers: str | None = None
    # Reward models (`reward_pairs` data): the spurious attribute of a response that a causal reward model must be
    # invariant to: `length` (in tokens) or `field` (the records' z_chosen / z_rejected), and how many bins it is cut
    # into (quantiles of the training set for numbers; categories get a bin each). See alignkit/data/spurious.py.
    spurious_attribute: Literal["length", "field"] = "length"
    spurious_bins: int = 4
    # The training set is encoded once with datasets' map over num_proc processes (null: 1 below 20k rows, else up
    # to 8) and cached under cache_dir (null: $ALIGNKIT_CACHE/data), keyed by source, tokenizer and encoding
    # settings; workers read their rows from those files. On a multi-node cluster cache_dir must be on storage every
    # node mounts (like run.storage_path). See alignkit/pipelines/data_cache.py.
    num_proc: int | None = None
    cache_dir: str | None = None


@dataclass
class ObjectiveConfig:
    name: str = ""
    params: dict[str, Any] = field(default_factory=dict)  # filled from the other keys of `objective:`


@dataclass
class OptimConfig:
    lr: float = 5e-6
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    # transformers.get_scheduler's schedules, computed by transformers (the same learning rate as a TRL/HF Trainer run
    # with the same settings at every step): warm-up from 0 over warmup_steps. `constant` has no warm-up (use
    # constant_with_warmup); cosine_with_min_lr needs scheduler_kwargs {min_lr_rate: 0.1} (or min_lr);
    # warmup_stable_decay needs {num_decay_steps: N}.
    scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_min_lr",
                       "warmup_stable_decay"] = "constant"
    warmup_steps: int = 0
    scheduler_kwargs: dict = field(default_factory=dict)
    max_grad_norm: float = 1.0  # 0 disables clipping
    # Regexes over parameter names: only matching parameters train (e.g. RMU's
    # ["layers\\.(5|6|7)\\.mlp\\.down_proj\\.weight"]); empty = all parameters.
    trainable: list[str] = field(default_factory=list)


@dataclass
class TrainerConfig:
    max_steps: int = 100  # optimizer steps
    num_epochs: float | None = None  # instead of max_steps: passes over the training set (max_steps is computed)
    micro_batch_size: int = 4  # examples (pairs for DPO) per worker per forward
    grad_accum: int = 1
    backend: Literal["deepspeed", "torch"] = "deepspeed"
    zero_stage: int = 0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # fp16 is refused with the reason (no loss scaling)
    eval_every: int = 0  # optimizer steps between held-out evaluations; 0 = at the start and end only
    log_every: int = 1
    progress_bar: bool = True
    checkpoint_every: int = 0  # optimizer steps between checkpoints (model, optimizer, scheduler, RNG, data position)
    export_every: int = 0  # optimizer steps between exported models (<output>/step_<N>, HF format; 0 = final only)
    keep_checkpoints: int = 2  # retention: keep the last K (or the best K by checkpoint_metric)
    checkpoint_metric: str | None = None  # e.g. eval/loss: keep the best instead of the last
    checkpoint_mode: Literal["min", "max"] = "min"
    on_nonfinite: Literal["abort", "skip"] = "abort"  # a NaN/inf loss: stop (after a checkpoint) or skip the batch
    offload_optimizer: bool = False  # DeepSpeed ZeRO optimizer-state offload to CPU (stage >= 1)
    offload_params: bool = False  # DeepSpeed ZeRO-3 parameter offload to CPU


@dataclass
class ClusterConfig:
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0  # with use_gpu
    max_failures: int = 0  # worker-group restarts from the latest checkpoint before the run fails


@dataclass
class EvalConfig:
    generate: bool = True  # greedy generations on held-out prompts, scored by the dataset's checker
    num_prompts: int = 64
    max_new_tokens: int = 32
    batch_size: int = 16  # examples per forward of the held-out loss pass and of the generations (per worker)
    compare_to_start: bool = True  # also evaluate the starting model, so the report shows before vs after
    # Reward models: the evaluation suite run on the trained model (held-out sets incl. distribution-shifted ones,
    # counterfactual length edits, best-of-n selection, calibration). See evals/reward.yaml.
    # Unlearning: the sets of the forget/retain evaluation (evals/unlearning*.yaml); default: from the recipe's data.
    suite: str | None = None


@dataclass
class UnlearnConfig:
    """Unlearning runs (`forget` objectives): learn -> unlearn -> evaluate, see alignkit/pipelines/unlearn.py."""
    # learn: fine-tune model.path (SFT) on the forget set + the retain set (data.retain_split, first data.retain_size
    # items) into the *target* model, and on that retain set only into the *retain* model (forget quality is measured
    # against it). Both are cached by a hash of what produces them, so a second method on the benchmark skips this.
    learn: bool = True
    learn_epochs: float = 14  # passes over each model's learn data (random facts need many, see README)
    learn_lr: float = 3e-4
    learn_batch_size: int = 8
    target_path: str | None = None  # with learn: false, an existing target model (else model.path is the target)
    retain_model_path: str | None = None  # with learn: false, an existing retain model (none: no forget quality)
    # Evaluation sets, from data.train's source: the forget set is data.train_split, retain = data.retain_split.
    holdout_split: str | None = "holdout"  # never-trained items: non-members for membership inference
    forget_text_split: str | None = "auto"  # raw texts of the forget set for VerbMem; auto = <forget split>_text
    eval_max_items: int = 60  # per set
    max_new_tokens: int = 32
    # Attacks on the unlearned model: relearn = SFT for `relearn_steps` on the first half of the forget items,
    # then measure the *other* half; quantize = round linear weights to these bit widths (RTN, per channel).
    relearn_steps: int = 10
    relearn_lr: float = 1e-5
    quantize_bits: list[int] = field(default_factory=lambda: [8, 4])


@dataclass
class SweepConfig:
    """`python launch.py RECIPE --sweep`: a Ray Tune search over recipe keys; each trial is a normal run."""
    # {"optim.lr": {"loguniform": [1e-6, 1e-4]}, "objective.beta": {"choice": [0.05, 0.1]},
    #  "trainer.max_steps": {"grid": [10, 20]}, "optim.warmup_steps": {"uniform": [0, 5]}}
    space: dict[str, Any] = field(default_factory=dict)
    metric: str = "eval/loss"  # any eval/ metric, or gen/<name> from the held-out generations
    mode: Literal["min", "max"] = "min"
    # asha stops weak trials at eval steps (trainer.eval_every); pbt (population-based training) runs the trials
    # together and every `perturbation_interval` steps restarts the weakest from a copy of a strong trial's
    # checkpoint with its swept values mutated (optim.lr and objective parameters only)
    scheduler: Literal["none", "asha", "pbt"] = "none"
    # random / grid: Tune's variant generator (grid entries are searched in full, the others sampled); optuna (TPE)
    # and hyperopt: model-based search through Tune's searchers (pip install optuna / hyperopt; no grid entries)
    search: Literal["random", "grid", "optuna", "hyperopt"] = "random"
    grace_period: int = 1  # evaluations before ASHA may stop a trial
    perturbation_interval: int = 0  # pbt: optimizer steps between perturbations (a multiple of trainer.eval_every)
    num_samples: int = 1  # samples per grid point (random draws for choice/uniform/loguniform)
    max_concurrent_trials: int = 1
    trial_cpus: float = 0.1  # the trial's own process; its Ray Train workers take cluster.cpus_per_worker each
    seed: int = 0  # the search's seed: random draws, Optuna and HyperOpt (the same recipe samples the same trials)


@dataclass
class RolloutConfig:
    """Generation engines for online methods (alignkit/rollout): Ray actors, weights pushed from the trainer."""
    backend: Literal["auto", "vllm", "hf"] = "auto"  # auto: vllm when it is installed, else hf
    num_engines: int = 1
    cpus_per_engine: float = 1.0
    gpus_per_engine: float = 0.0  # vllm on GPU: tensor_parallel_size (colocation: a fraction, with sleep/wake)
    tensor_parallel_size: int = 1  # vllm
    gpu_memory_utilization: float = 0.5  # vllm
    enforce_eager: bool = True  # vllm: no CUDA graphs / torch.compile (required on CPU; slower decode on GPU)
    batch_size: int = 16  # hf: sequences per generate call
    prefix_caching: bool = True  # vllm: reuse the KV cache of shared prompt prefixes (per-step negatives' Q̂ stage
    #                              continues many prefixes of one question)
    threads: int | None = None  # hf: torch threads per engine (default: cpus_per_engine)
    sync_timeout_s: float = 300.0  # a weight push or generate call that takes longer fails with a clear error
    # how new weights reach the engines: collective = from trainer rank 0 through vLLM's weight-transfer protocol
    # (NCCL on GPU, gloo on CPU), in buckets; object_store = a state dict through Ray's object store (any backend);
    # auto = collective for vllm, object_store for hf
    weight_sync: Literal["auto", "collective", "object_store"] = "auto"
    sync_bucket_mb: int = 256  # collective: bytes per broadcast
    colocate: bool = False  # vllm on the trainer's GPUs: engines sleep (free their memory) while the trainer trains
    start_timeout_s: float = 900.0  # engines that have not loaded their model by then fail the run


@dataclass
class OnlineConfig:
    """Online training (alignkit/pipelines/online.py): one trainer for the whole run; every `steps_per_round`
    optimizer steps the engines generate for the next prompts, a feedback provider scores every completion, a row
    builder turns them into training rows of the objective's record kind, and trainer rank 0 pushes the new weights
    to the engines after the round. `rounds: 0` = an offline run."""
    rounds: int = 0
    steps_per_round: int = 1  # optimizer steps per round; trainer.max_steps is rounds x steps_per_round
    prompts: str = ""  # the prompt set: builtin:<name>, a file or a hub id (rows need `prompt`, plus what the
    #                    feedback provider reads, e.g. `answer` for exact_answer)
    prompts_split: str = "train"
    prompts_per_round: int = 16  # drawn in a seeded order without replacement, epoch after epoch
    samples_per_prompt: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    # exact_answer {answer_field} | format {pattern, description, max_words} | reward_model {model_dir} |
    # llm_judge {max_tokens}: see alignkit/rollout/feedback.py
    feedback: str = "exact_answer"
    feedback_params: dict[str, Any] = field(default_factory=dict)
    # rejection_sampling {min_score} (sft) | unpaired_by_score {threshold} (unpaired) | best_vs_worst {min_gap}
    # (pairs); auto = the one that fits the objective's record kind. See alignkit/pipelines/online.py.
    rows: str = "auto"
    rows_params: dict[str, Any] = field(default_factory=dict)
    # A round with fewer rows than one global batch: accumulate = generate the next prompts too, until there are
    # enough (at most `max_extra_rounds` times; an empty round is logged and counted); resample = read the few rows
    # there are again, in a new seeded order each pass (an empty round still generates more).
    few_rows: Literal["accumulate", "resample"] = "accumulate"
    max_extra_rounds: int = 4
    eval_every: int = 1  # rounds between held-out evaluations (greedy generations scored by the same provider)
    eval_prompts: str | None = None  # default: `prompts`, split `eval_split`
    eval_split: str = "test"
    eval_size: int = 32


@dataclass
class StepsConfig:
    """Per-step negatives (Setlur et al. 2024; alignkit/pipelines/step_negatives.py): π_sft from gold solutions,
    samples of π_sft on `num_problems` more problems, Q̂ of every step prefix of the wrong ones from best-of-K
    rollouts, the critical step, then training rows for `method` from π_sft. Every stage is cached by a hash of
    its inputs. `problems: ""` = not a per-step run."""
    problems: str = ""  # a problem set with a checker: builtin:chain_arith (rows: prompt, completion = a gold
    #                     solution, and what the checker reads)
    split: str = "train"
    sft_problems: int = 256  # the first N problems' gold solutions train π_sft (0: model.path is π_sft)
    sft_steps: int = 16  # optimizer steps of that SFT (at the recipe's batch size and optim.lr)
    sft_lr: float = 5.0e-5
    num_problems: int = 128  # the synthetic problems after them: sampled and mined
    use_problems: int | None = None  # the first N of them give the training rows (default: all; a data-size sweep
    #                                  mines once and trains on subsets)
    samples_per_problem: int = 4  # samples of π_sft per problem (the positives and negatives)
    max_negatives: int = 1  # wrong samples per problem whose steps are valued (the paper: 8)
    k: int = 5  # best-of-K rollouts per prefix (the paper's K = 5)
    groups: int = 1  # M groups of K per prefix: Q̂ = share of groups with a success (M = 1: Q̂ in {0, 1})
    temperature: float = 1.0
    max_new_tokens: int = 64
    split_pattern: str | None = None  # steps end after each match of this regex; default: after each newline
    early_exit: bool = False  # value prefixes depth by depth and stop a negative at its first hopeless prefix (Q̂ = 0)
    #                           (default: all prefixes of all negatives in one generate call)
    critical: Literal["mc", "oracle"] = "mc"  # the critical step from Q̂, or the checker's true first wrong step
    keep_truncated: bool = False  # value wrong samples cut off at max_new_tokens too (by default only finished
    #                               wrong answers: a cut-off one could still have been completed right)
    keep_no_pit: bool = False  # keep negatives where every Q̂ > 0 (their critical step is still the first minimum)
    pair_form: Literal["paper", "shared_prefix"] = "paper"  # paper: question / a full correct solution / the
    #   negative up to its critical step; shared_prefix: question + steps before the pit / a correct continuation
    #   of that prefix / the pit step (Self-Explore, Step-DPO)
    method: Literal["step_dpo", "step_awr", "sft", "rft", "full_dpo"] = "step_dpo"
    awr_beta: float = 0.5  # AWR weights exp(A / awr_beta), clipped at awr_max_weight
    awr_max_weight: float = 20.0
    eval_split: str = "test"


@dataclass
class Recipe:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    unlearn: UnlearnConfig = field(default_factory=UnlearnConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    online: OnlineConfig = field(default_factory=OnlineConfig)
    steps: StepsConfig = field(default_factory=StepsConfig)
    # Where the recipe came from, for error messages and the run record; not a YAML key.
    source: str = field(default="<dict>", metadata={"internal": True})

    def derive(self, changes: dict[str, Any], source: str | None = None) -> Recipe:
        """A validated copy with `changes` ({"trainer.max_steps": 8, "objective": {"name": "sft"}}); see
        config/loader.py derive."""
        from alignkit.config.loader import derive

        return derive(self, changes, source)

    @property
    def output_dir(self) -> str:
        return self.run.output_dir or f"runs/{self.run.name}"

    @property
    def storage_path(self) -> str:
        return self.run.storage_path or f"{self.output_dir}/checkpoints"

    @property
    def global_batch_size(self) -> int:
        return self.trainer.micro_batch_size * self.trainer.grad_accum * self.cluster.num_workers
