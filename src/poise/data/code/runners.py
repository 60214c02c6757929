"""The code runner a run uses, built from its reward settings and started once before training: the local bubblewrap
sandbox (`sandbox.LocalSandbox`) or a SandboxFusion server (`fusion.SandboxFusionRunner`). A runner that cannot start
ends the run with one line (ConfigError) naming what is missing; nothing falls back to running programs unsandboxed
unless `code_sandbox none` was asked for."""

from __future__ import annotations

from poise.config.errors import ConfigError

from .sandbox import LocalSandbox, SandboxUnavailable


def make_runner(backend: str = "local", sandbox: str = "bwrap", url: str = "", timeout: float = 10.0,
                memory_mb: int = 1024, workers: int = 0, key: str = "reward."):
    """A started runner (`.run(jobs) -> results`); ConfigError naming `{key}code_backend`/`code_sandbox`/`sandbox_url`
    when it cannot start."""
    if backend == "local":
        runner = LocalSandbox(timeout=timeout, memory_mb=memory_mb, workers=workers, sandbox=sandbox)
    elif backend == "sandbox_fusion":
        from .fusion import SandboxFusionRunner

        if not url:
            raise ConfigError(f"{key}sandbox_url: {key}code_backend sandbox_fusion needs the server's address")
        runner = SandboxFusionRunner(url, timeout=timeout, workers=workers)
    else:
        raise ConfigError(f"{key}code_backend: expected 'local' or 'sandbox_fusion', got {backend!r}")
    try:
        runner.check()
    except SandboxUnavailable as e:
        msg = str(e)  # the local sandbox names reward.code_sandbox; SandboxFusion's names the URL
        msg = key + msg[len("reward."):] if msg.startswith("reward.") else f"{key}sandbox_url: {msg}"
        raise ConfigError(msg) from None
    return runner


def attach_runner(task, reward_cfg, runner=None) -> None:
    """Give a task whose reward runs programs (`task.uses_code`, a code task or a mixture with one) its runner and
    `code_score` from a RewardConfig; `runner` reuses one already started. Other tasks are left alone."""
    if not getattr(task, "uses_code", False):
        return
    task.code_runner = runner or make_runner(reward_cfg.code_backend, reward_cfg.code_sandbox, reward_cfg.sandbox_url,
                                             reward_cfg.code_timeout, reward_cfg.code_memory_mb,
                                             reward_cfg.code_workers)
    task.code_score = reward_cfg.code_score
