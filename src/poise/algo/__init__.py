"""Pure math, on tensors: advantages, the PPO loss and KL, the probe's features, the ridge probe and its buffer,
bootstrap statistics. Imports nothing else from poise."""

from typing import Literal

# The loss aggregation modes (`losses.aggregate`): here rather than in losses.py, so the config imports the choice
# without importing torch.
Aggregation = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]

# The importance-sampling corrections for another engine's samples (`correction.importance_weights`), as TRL's
# `vllm_importance_sampling_mode` names them; here for the same reason.
TisMode = Literal["sequence_truncate", "sequence_mask", "token_truncate", "token_mask"]
