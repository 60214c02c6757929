"""`TrainState`: every object a training run's next step depends on, built in one place (`build_state`) and saved
and restored as one dictionary (`state_dict` / `load_state_dict`; `poise.io.checkpoint` writes it to files).

What it holds: the task, tokenizer, policy (and a frozen reference copy when loss.kl_coef > 0), the sampler that
generates from it (`poise.rollout.sampler`), the PPO critic when algorithm.advantage is 'critic', their optimizers
and warm-up schedulers, the value probes with their feature buffers (`ProbeBank`), the shared prompt stream (and this rank's view of
it), the sampling generator, the compute meter, the numerical guard's counters, and the number of the last finished
step. Under FSDP the modules are sharded here, before the
optimizers see their parameters.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from poise.algo.probe_bank import ProbeBank
from poise.config.errors import ConfigError
from poise.config.loading import save_config, to_dict
from poise.config.train_config import TrainConfig
from poise.data.tasks import Task, drop_long_prompts
from poise.data.tasks.dataset import build_task, check_reward_function
from poise.data.code.runners import attach_runner
from poise.data.verifier import SafeVerifier
from poise.parallel import fsdp
from poise.parallel.distributed import Dist, check_layout
from poise.rollout.limits import check_fits
from poise.rollout.logprobs import check_plain_head
from poise.rollout.models import decoder_layers, load_model, resolve_layer
from poise.rollout.sampler import KVCacheSampler, Sampler
from poise.train.compute import ComputeMeter
from poise.train.critic import ValueModel
from poise.train.screened_stream import ScreenedStream

PROBE_ADVANTAGES = ("poise", "poise_prompt")  # the advantages whose baseline is a value probe


class PromptStream:
    """Endless prompts from a fixed pool, reshuffled on every pass with a seeded RNG."""

    def __init__(self, pool: list, seed: int):
        self.pool, self.rng, self.order = pool, random.Random(seed), []

    def take(self, n: int) -> list:
        out = []
        while len(out) < n:
            if not self.order:
                self.order = list(range(len(self.pool)))
                self.rng.shuffle(self.order)
            out.append(self.pool[self.order.pop()])
        return out


class ShardedStream:
    """This rank's view of the shared PromptStream: `take(n)` draws the step's n prompts (every rank draws the same
    ones) and keeps this rank's whole groups, interleaved per mini-batch (distributed.py)."""

    def __init__(self, stream: PromptStream, dist: Dist, mini_batch: int):
        self.stream, self.dist, self.mini_batch = stream, dist, mini_batch

    def take(self, n: int) -> list:
        items = self.stream.take(n)
        return [items[i] for i in self.dist.local_prompts(n, min(self.mini_batch, n))]


def marker_token_id(tokenizer, marker: str) -> int | list[int] | None:
    """The end-of-reasoning marker's token id, or its ids (matched as a sequence) when it takes several tokens;
    None for an empty marker (features then use the last k tokens and the answer entropy is 0)."""
    ids = tokenizer(marker, add_special_tokens=False)["input_ids"] if marker else []
    return ids[0] if len(ids) == 1 else (list(ids) or None)


@dataclass(kw_only=True)
class TrainState:
    """Everything the next step depends on (see the module's docstring); built by keyword (`build_state`)."""

    cfg: TrainConfig
    dist: Dist
    task: Task
    tokenizer: object
    model: torch.nn.Module
    ref_model: torch.nn.Module | None
    critic: ValueModel | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    critic_optimizer: torch.optim.Optimizer | None
    critic_scheduler: torch.optim.lr_scheduler.LRScheduler | None
    probes: ProbeBank  # the value probes and their buffers: one, or one per task (probe.split_by)
    stream: PromptStream  # the shared stream: its position is saved
    prompts: PromptStream | ShardedStream  # this rank's view of it
    generator: torch.Generator
    layer: int | None  # the probe's decoder layer (None without POISE)
    marker: int | list[int] | None  # the end-of-reasoning marker's token id(s)
    sampler: Sampler | None = None  # the rollout engine (KVCacheSampler on the policy itself)
    screen: ScreenedStream | None = None  # screen.mode != none: the screened shared stream (screened_stream.py)
    meter: ComputeMeter = field(default_factory=ComputeMeter)
    counters: dict = field(default_factory=lambda: {"skipped_total": 0, "consecutive_skips": 0})  # numerical guard
    step: int = 0  # the last finished step

    @property
    def use_probe(self) -> bool:
        """The advantages use a value probe: POISE's (poise) or the prompt probe (poise_prompt)."""
        return self.cfg.algorithm.advantage in PROBE_ADVANTAGES

    @property
    def use_features(self) -> bool:
        """Whether the scoring pass takes probe features into the buffer: POISE (prompt screening by probe keeps its
        own buffer of prompt features, `screened_stream.py`)."""
        return self.use_probe

    @property
    def feature_meta(self) -> dict:
        """What the probe's features were computed from; saved with it and checked when a probe is loaded."""
        return {"layer": self.layer, "k": self.cfg.probe.k, "marker": self.cfg.probe.marker, "marker_id": self.marker}

    # ---- saving and restoring ----

    def state_dict(self) -> dict:
        """The run's state as tensors and JSON-able values. A collective: every rank calls it; under FSDP the weights
        and optimizer states are gathered unsharded to rank 0 (other ranks' entries are {}), and `rng` holds every
        rank's (torch, sampling generator) states. Tied weights appear once (`fsdp.tied_names`).

        Keys: step; model, critic (weights); optimizer, scheduler, critic_optimizer, critic_scheduler; probe,
        probe_meta, buffer, buffer_meta (`ProbeBank.state_dict`); rng; cuda_rng; stream; python_random; numpy_random; meter; counters;
        config."""
        sharded = self.dist.sharded
        sd = {"step": self.step, "model": _weights(self.model, sharded),
              "optimizer": fsdp.optimizer_state(self.model, self.optimizer) if sharded else self.optimizer.state_dict(),
              "scheduler": self.scheduler.state_dict(), "critic": None, "critic_optimizer": None,
              "critic_scheduler": None}
        if self.critic is not None:
            sd["critic"] = _weights(self.critic, sharded)
            sd["critic_optimizer"] = fsdp.optimizer_state(self.critic, self.critic_optimizer) if sharded \
                else self.critic_optimizer.state_dict()
            sd["critic_scheduler"] = self.critic_scheduler.state_dict()
        np_state = np.random.get_state()
        sd.update(
            **self.probes.state_dict(),
            rng=self.dist.gather_objects((torch.get_rng_state(), self.generator.get_state())),  # one pair per rank
            cuda_rng=self.dist.gather_objects(cuda_rng_states()),  # per rank: every CUDA device's, [] on the CPU
            stream={"order": self.stream.order, "rng": _jsonable(self.stream.rng.getstate())},
            python_random=_jsonable(random.getstate()),
            numpy_random=[np_state[0], np_state[1].tolist(), *np_state[2:]],
            meter=dict(self.meter.total), counters=dict(self.counters), config=to_dict(self.cfg),
            screen=self.screen.state_dict() if self.screen is not None else None)
        return sd

    def load_state_dict(self, sd: dict) -> None:
        """Restore everything `state_dict` returned (every rank passes the whole of it; under FSDP each keeps its
        shard). The probes and buffers are replaced by rebuilt objects."""
        self.step = int(sd["step"])
        _load_weights(self.model, self.optimizer, sd["model"], sd["optimizer"])
        self.scheduler.load_state_dict(sd["scheduler"])
        if self.critic is not None:
            _load_weights(self.critic, self.critic_optimizer, sd["critic"], sd["critic_optimizer"])
            self.critic_scheduler.load_state_dict(sd["critic_scheduler"])
        self.probes.load_state_dict(sd)
        rng = sd["rng"]
        torch_state, gen_state = rng[self.dist.rank] if len(rng) > 1 else rng[0]
        torch.set_rng_state(torch_state)
        try:
            self.generator.set_state(gen_state)
        except RuntimeError as e:  # a CPU generator's state does not fit a CUDA one, and the reverse
            raise ValueError(f"the sampling generator was saved on another kind of device than "
                             f"{self.generator.device} ({e}); resume with the run's own `device`") from None
        cuda = sd.get("cuda_rng") or []
        set_cuda_rng_states(cuda[self.dist.rank] if len(cuda) > 1 else (cuda[0] if cuda else []))
        self.stream.order = list(sd["stream"]["order"])
        self.stream.rng.setstate(_tuplify(sd["stream"]["rng"]))
        random.setstate(_tuplify(sd["python_random"]))
        name, keys, *rest = sd["numpy_random"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
        self.meter.total.clear()
        self.meter.total.update(sd["meter"])
        self.counters.clear()
        self.counters.update(sd.get("counters", {}))
        if self.screen is not None and sd.get("screen") is not None:
            self.screen.load_state_dict(sd["screen"])


def cuda_rng_states() -> list[torch.Tensor]:
    """Every CUDA device's RNG state when this process has initialised CUDA (dropout and sampling draw from it on a
    GPU), else [] (a CPU run saves nothing more)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return [t.cpu() for t in torch.cuda.get_rng_state_all()]
    return []


def set_cuda_rng_states(states: list[torch.Tensor]) -> None:
    """Restore `cuda_rng_states` (device i gets states[i]), for the devices this machine has; nothing without CUDA."""
    if states and torch.cuda.is_available():
        for i, t in enumerate(states[:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(t, i)


def start_run(cfg: TrainConfig) -> Dist:
    """Before anything is built: torch's thread count, this process's rank and device, the processes' layout and
    FSDP (recorded in cfg.fsdp, so resume checks it), every seed, and `output_dir` with the resolved config.yaml."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        dist = Dist(cfg.device)  # rank, world size and this process's device
    except ValueError as e:
        raise ConfigError(str(e)) from None
    problem = check_layout(dist.world, cfg.rollout.prompts_per_step, cfg.optim.mini_batch_prompts)
    if problem:
        raise ConfigError(problem)
    try:
        fsdp.configure(cfg, dist)  # sets cfg.fsdp and dist.sharded
    except ValueError as e:
        raise ConfigError(str(e)) from None
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # identical on every rank: tiny presets are built from it
    if dist.main:
        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
        save_config(cfg, Path(cfg.output_dir) / "config.yaml")
    return dist


def build_state(cfg: TrainConfig, dist: Dist) -> TrainState:
    """A fresh run's state at step 0: task (its data file and reward function checked first), model and tokenizer,
    reference and critic copies, FSDP sharding, the verifier, the prompt pool (long prompts dropped, never
    truncated), optimizers with linear warm-up, and the probe (a fresh one, or `probe.load`)."""
    task = build_task(cfg.task, cfg.reward.function)  # data file and reward function checked before anything else
    attach_runner(task, cfg.reward)  # code tasks: their sandbox, started now (a sandbox that cannot start stops here)
    model, tokenizer = load_model(cfg.model, cfg.task.name, cfg.seed)  # + LoRA adapters when model.lora_r > 0
    model.to(dist.device)
    if cfg.optim.logit_chunk_tokens:  # chunks need logits that are the LM head's output alone (no cap or scale)
        try:
            check_plain_head(model)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    ref_model = copy.deepcopy(model).eval().requires_grad_(False) if cfg.loss.kl_coef > 0 else None
    critic = ValueModel(model) if cfg.algorithm.advantage == "critic" else None  # PPO: a policy-sized value model
    if dist.sharded:  # each of them in units of one decoder layer, before the optimizers see their parameters
        layer_type = type(decoder_layers(model)[0])
        for m in (model, ref_model, critic):
            if m is not None:
                fsdp.shard(m, layer_type, dist.device, dist.world)
    task.verifier = SafeVerifier(timeout=cfg.reward.timeout)  # answer checking in a sandboxed worker process
    pool, n_long = drop_long_prompts(task.problems("train", cfg.task.train_size, seed=cfg.seed), tokenizer,
                                     cfg.task.max_prompt_tokens)
    if n_long:
        print(f"task.max_prompt_tokens: dropped {n_long} of {n_long + len(pool)} training prompts longer than "
              f"{cfg.task.max_prompt_tokens} tokens (none truncated)")
    if not pool:
        raise ConfigError(f"task.max_prompt_tokens: every training prompt is longer than {cfg.task.max_prompt_tokens} "
                          "tokens; raise the limit")
    check_reward_function(task, pool)  # a user's reward function that raises or hangs fails now, not as all-0 rewards
    longest = check_fits(model, tokenizer, pool, cfg.rollout.max_new_tokens, "rollout.max_new_tokens")  # limits.py
    stream = PromptStream(pool, cfg.seed)  # the same on every rank; each keeps its share of every draw
    screen = ScreenedStream(stream, cfg, cfg.seed) if cfg.screen.mode != "none" else None  # the same on every rank
    source = screen or stream
    prompts = source if dist.world == 1 else ShardedStream(source, dist, cfg.optim.mini_batch_prompts)
    gen = torch.Generator(dist.device).manual_seed(cfg.seed + 1_000_003 * dist.rank)  # rank 0 samples as one process
    warm = max(1, cfg.optim.warmup_steps)

    def warmup(opt):
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    critic_opt = critic_sched = None
    if critic is not None:
        critic_opt = torch.optim.AdamW(critic.parameters(), lr=cfg.critic.lr, weight_decay=cfg.optim.weight_decay)
        critic_sched = warmup(critic_opt)
    needs_layer = cfg.algorithm.advantage in PROBE_ADVANTAGES or cfg.screen.mode == "probe"  # probe-layer states
    layer = resolve_layer(cfg.probe.layer, len(decoder_layers(model))) if needs_layer else None
    marker = marker_token_id(tokenizer, cfg.probe.marker)
    state = TrainState(
        cfg=cfg, dist=dist, task=task, tokenizer=tokenizer, model=model, ref_model=ref_model, critic=critic,
        optimizer=optimizer, scheduler=warmup(optimizer), critic_optimizer=critic_opt, critic_scheduler=critic_sched,
        probes=probe_bank(cfg, task), stream=stream, prompts=prompts,
        generator=gen, layer=layer, marker=marker)
    state.sampler = build_sampler(cfg, dist, model, tokenizer, longest)
    if screen is not None:
        state.screen = screen
        screen.attach(model, tokenizer, layer, state.meter, state.sampler)
    if cfg.probe.load:
        state.probes.load(cfg.probe.load, state.feature_meta)
    return state


def probe_bank(cfg: TrainConfig, task: Task) -> ProbeBank:
    """The run's value probes: POISE's full probes (prompt, trajectory, entropies) or, for poise_prompt, prompt
    probes; one for every row, or with probe.split_by task one per task of the mixture (`task.parts`)."""
    keys = list(getattr(task, "parts", [task.name])) if cfg.probe.split_by == "task" else ["all"]
    return ProbeBank(keys, "prompt" if cfg.algorithm.advantage == "poise_prompt" else "full", cfg.probe)


def build_sampler(cfg: TrainConfig, dist: Dist, model, tokenizer, longest_prompt: int) -> Sampler:
    """The rollout engine `rollout.engine` resolves to (`vllm_engine.resolve_engine`): the built-in KV-cache sampler,
    or a vLLM engine colocated in this process, created once from the policy, seeded per rank, whose max_model_len is
    the longest training prompt plus rollout.max_new_tokens (checked against the model's positions: `limits.py`), so
    it cuts no response before the built-in sampler would."""
    from poise.rollout.vllm_engine import resolve_engine

    if resolve_engine(cfg.rollout.engine, sum(p.numel() for p in model.parameters())) == "hf":
        return KVCacheSampler(model, tokenizer)
    if cfg.model.lora_r > 0:
        raise ConfigError("rollout.engine: the vLLM engine takes the full weights; with model.lora_r > 0 use "
                          "rollout.engine hf")
    from poise.rollout.vllm_engine import VLLMSampler

    r = cfg.rollout
    return VLLMSampler(model, tokenizer, max_model_len=longest_prompt + r.max_new_tokens,
                       dtype=r.engine_dtype, seed=cfg.seed + 1_000_003 * dist.rank, world=dist.world,
                       gpu_memory_utilization=r.gpu_memory_utilization, sleep=r.sleep,
                       max_seqs=r.prompts_per_step * r.group_size, trust_remote_code=cfg.model.trust_remote_code)


def _weights(module: torch.nn.Module, sharded: bool) -> dict[str, torch.Tensor]:
    """A module's weights with tied names once: gathered to rank 0 under FSDP, else this process's own tensors."""
    if sharded:
        return fsdp.full_state(module)
    tied = {n for group in fsdp.tied_names(module) for n in group[1:]}
    return {k: v.contiguous() for k, v in module.state_dict().items() if k not in tied}


def _load_weights(module, optimizer, weights: dict, optim_state: dict) -> None:
    if fsdp.is_sharded(module):  # every rank passes the full tensors and keeps its shard
        fsdp.load_full_state(module, weights)
        fsdp.load_optimizer_state(module, optimizer, optim_state)
    else:
        module.load_state_dict(fsdp.fill_tied(module, weights))
        optimizer.load_state_dict(optim_state)


def _jsonable(x):
    return [_jsonable(v) for v in x] if isinstance(x, (list, tuple)) else x


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, list) else x
