"""The configs of the other commands: `poise sft`, `poise eval`, `poise probe-eval` and `poise compare`.

They share the sections of `train_config.py` (the model, the task) and are built the same way, by
`poise.config.loading.build_config`. As there, every field's docstring (the string literal under it) becomes
`--help`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from poise.config.train_config import BudgetName, ModelConfig, TaskConfig


@dataclass
class SFTConfig:
    """`poise sft`: supervised warm start on programmatic worked solutions."""

    output_dir: str = "runs/sft"
    """Where the fine-tuned model, tokenizer, metrics and per-level accuracy table are written."""
    seed: int = 0
    """Random seed (tokenizer corpus, initialisation, data order, evaluation sampling)."""
    model: str = "tiny"
    """Start from a tiny preset built from scratch ('tiny', 'micro'), 'default' (the embedded model), a GGUF such as
    'smollm2-135m', a local Hugging Face model directory, or a Hugging Face Hub model ID (org/name or
    org/name@revision; downloaded into the Hub cache on first use, read from it alone when HF_HUB_OFFLINE=1)."""
    trust_remote_code: bool = False
    """Let a model whose config.json maps it to its own Python code (auto_map) run that code; off refuses it."""
    vocab_size: int = 512
    """BPE vocabulary size of the tokenizer trained for a tiny preset (<= 1024)."""
    task: TaskConfig = field(default_factory=TaskConfig)
    steps: int = 250
    """Optimizer steps. 250 on chain_sum's t3d1-t6d1 builds the embedded default: far enough from solved that RL has
    room."""
    batch_size: int = 64
    """Sequences per optimizer step."""
    lr: float = 2e-3
    """AdamW peak learning rate (linear warm-up, cosine decay to 10%)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    warmup_steps: int = 100
    """Learning-rate warm-up steps."""
    eval_samples: int = 4
    """Samples per held-out problem (temperature 1) for the per-level accuracy table."""
    max_new_tokens: int = 64
    """Generation limit during evaluation."""
    threads: int = 0
    """torch CPU threads; 0 keeps torch's default."""


@dataclass
class EvalConfig:
    """`poise eval`: sample k responses per held-out problem, score them in the sandboxed verifier, and report
    Avg@k and pass@k overall and per difficulty level (per-problem JSON Lines + a summary JSON)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    split: Literal["train", "test"] = "test"
    """Split to evaluate: 'test' (held out from training) or 'train'."""
    num_problems: int = 500
    """Problems to evaluate (task.train_size and task.eval_size are not read). Capped at the split's size for data
    files and benchmarks; a procedural task's repeats (a small level has few distinct held-out questions) are
    evaluated once, so fewer may remain."""
    k: int = 8
    """Samples per problem (Avg@k, pass@k)."""
    temperature: float = 1.0
    """Sampling temperature."""
    top_p: float = 1.0
    """Nucleus sampling threshold; 1.0 disables it."""
    max_new_tokens: int = 64
    """Maximum response length in tokens. 64 suits the embedded arithmetic tasks (answers take < 50 tokens); real
    models on math benchmarks need far more (1024 or above)."""
    batch_size: int = 32
    """Prompts per generation batch (each repeated k times, so batch_size x k sequences are sampled together)."""
    seed: int = 0
    """Seed of the problem selection and of the torch.Generator that drives sampling."""
    output: str = ""
    """Per-problem JSON Lines file; the summary goes to <output>.summary.json. Empty means
    runs/eval/<model>-<task>.jsonl. Parent folders are created."""
    reward_timeout: float = 5.0
    """Hard wall-clock limit in seconds for checking one answer in the sandboxed verifier (a timeout scores 0)."""
    device: str = "auto"
    """Where the model runs: 'auto' (a CUDA GPU when one is available, else the CPU), 'cpu', 'cuda', 'cuda:N' or
    'mps'."""
    reward_function: str = ""
    """A TRL-style reward 'module:function' or 'path/file.py:function' that replaces the task's (as
    reward.function does in training); a sample is correct when it returns 1."""
    code_backend: Literal["local", "sandbox_fusion"] = "local"
    """Code tasks: 'local' (bubblewrap sandboxes here) or 'sandbox_fusion' (a server at sandbox_url); as
    reward.code_backend in training."""
    code_sandbox: Literal["bwrap", "none"] = "bwrap"
    """The local backend's isolation, as reward.code_sandbox: 'bwrap', or 'none' (no isolation; logged loudly)."""
    sandbox_url: str = ""
    """SandboxFusion's address for code_backend sandbox_fusion."""
    code_timeout: float = 10.0
    """Wall-clock seconds for one program and all of its tests (a timeout fails the tests not passed by then)."""
    threads: int = 0
    """torch CPU threads; 0 keeps torch's default."""


@dataclass
class ProbeEvalConfig:
    """`poise probe-eval`: how well a probe fitted for a run's final policy estimates the value (pass rate) of
    held-out prompts, against the run's PPO critic when it has one and its online probe when it is a POISE run;
    optionally across levels or tasks. Writes a JSON and a scatter plot, prints a table."""

    run: str = ""
    """A finished `poise train` output directory (its config.yaml, policy/, and critic/ for PPO runs)."""
    train_config: str = ""
    """Instead of `run`: a training preset or YAML (e.g. smollm2) whose initial policy is studied, before any
    training (its model.*, task.*, reward.function, rollout.* and probe.* settings)."""
    overrides: list[str] = field(default_factory=list)
    """Settings of the run's or train_config's TrainConfig to change for the study, as 'key=value' (e.g.
    rollout.engine=vllm, reward.function=examples/last_number_reward.py:reward); quote an item whose value has commas:
    "['task.levels=[t2d1, t3d1]', rollout.engine=vllm]"."""
    prompt_layers: list[float] = field(default_factory=list)
    """Also score prompt-only probes (poise_single's: fitted on one rollout per prompt, each row's own reward) on the
    prompt states of these layers (fractions of depth or indices, as probe.layer); empty: the probe layer only."""
    other_run: str = ""
    """Also score another POISE run's online probe on its own policy (same held-out prompts)."""
    fit_prompts: int = 2048
    """Training prompts (x 2 rollouts) the probe is fitted on; 2,048 fill the default 4,096-row buffer."""
    eval_prompts: int = 300
    """Held-out prompts (distinct ones; a small level may have fewer)."""
    samples: int = 8
    """Responses per held-out prompt whose pass rate is the target (Avg@samples)."""
    fit_levels: list[str] = field(default_factory=list)
    """Transfer study: levels the transfer probe is fitted on (with a mixture task, e.g. chain_sum/t2d1); empty
    skips it."""
    eval_levels: list[str] = field(default_factory=list)
    """Transfer study: levels it is scored on."""
    seed: int = 0
    """Seed of the prompts and of the sampling generator."""
    output: str = ""
    """Results JSON (the plot goes beside it as .png); empty means RUN/probe_eval.json."""
    threads: int = 0
    """torch CPU threads; 0 keeps torch's default."""


@dataclass
class CompareConfig:
    """`poise compare`: several presets x several seeds on the same task, model and compute budget; each run's
    checkpoints are evaluated on held-out problems; a results JSON, a Markdown report and PNG plots are written."""

    methods: list[str] = field(default_factory=lambda: ["poise", "dapo", "grpo", "rloo"])
    """Presets to compare (src/poise/configs/*.yaml or YAML files)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    """Seeds; every method runs once per seed (5 by default, so the bootstrap over seeds has something to resample)."""
    budget_key: BudgetName = "generated_tokens"
    """The compute counter every run is stopped on (see budget.* of poise train)."""
    budget: float = 400000.0
    """Budget for that counter, the same for every run."""
    max_steps: int = 5000
    """Safety cap on steps; the budget should stop every run well before it."""
    eval_every: int = 10
    """Checkpoint (and later evaluate) every this many steps; the initial model and the last step are evaluated too."""
    eval_problems: int = 200
    """Held-out problems per evaluation: the same problems for every run and checkpoint (a paired design, which the
    bootstrap keeps paired)."""
    eval_k: int = 4
    """Samples per held-out problem (Avg@k)."""
    eval_max_new_tokens: int = 64
    """Response length limit at evaluation."""
    eval_batch_prompts: int = 64
    """Held-out prompts sampled together (each eval_k times); lower it when long responses fill GPU memory."""
    eval_levels: list[str] = field(default_factory=list)
    """Levels of the held-out problems; empty means the runs' own task.levels. Set it to measure what a training
    mixture teaches on part of it (for example without levels that no method can solve)."""
    output_dir: str = "runs/compare"
    """Where the runs, the results JSON, the report and the plots go; finished runs found there are reused."""
    threads: int = 0
    """torch CPU threads per run; 0 keeps torch's default."""
    overrides: list[str] = field(default_factory=list)
    """'key=value' overrides applied to every run after its preset (e.g. task.name=basic_arithmetic)."""
    reference: str = "dapo"
    """The method whose final accuracy is the target, and whose cost to it every other method's is divided by; when
    it is not among the methods, the target is the best accuracy every method reaches."""
    reference_budget: float = 0.0
    """Budget of the reference method's runs; 0 means `budget`. Raise it when the reference learns too little at
    `budget` for its final accuracy to be a meaningful target. Those runs go to <method>@<budget>/seed<s>."""
    bootstrap: int = 2000
    """Bootstrap replicates behind every interval (each resamples every method's seeds and the held-out problems)."""
    bootstrap_seed: int = 0
    """Seed of the bootstrap's draws: the intervals are deterministic given it."""
