"""Run by tests/test_trl.py under `accelerate launch --num_processes 2`: three POISETrainer rounds on the micro model;
each process writes what it saw to OUT/rank<r>.json."""

import hashlib
import json
import sys
from pathlib import Path

import torch

from poise.integrations.trl import POISEConfig, POISETrainer
from poise.rollout.models import load_local
from test_trl import TINY, chain_sum_dataset, even_length


class Recording(POISETrainer):
    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        last = self.poise_last
        self.record.append({
            "round": last["round"], "used": last["used_probe"], "rewards": last["rewards"].tolist(),
            "advantages": last["advantages"].tolist(), "local_advantages": out["advantages"].tolist(),
            "predictions": None if last["predictions"] is None else last["predictions"].tolist(),
            "probe": {k: hashlib.sha256(v.numpy().tobytes()).hexdigest() for k, v in self.probe.state_dict().items()},
            "buffer_rows": len(self.probe_buffer)})
        return out


def main(model_dir: str, out: str) -> None:
    model, tok = load_local(model_dir)
    args = POISEConfig(output_dir=out, max_steps=3,
                       **{**TINY, "per_device_train_batch_size": 4, "save_strategy": "no"})
    trainer = Recording(model=model, reward_funcs=even_length, args=args, train_dataset=chain_sum_dataset(),
                        processing_class=tok)
    trainer.record = []
    trainer.train()
    rank, world = trainer.accelerator.process_index, trainer.accelerator.num_processes
    weights = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()
    Path(out, f"rank{rank}.json").write_text(json.dumps({"world": world, "rounds": trainer.record,
                                                         "weights": weights}))
    # gloo's threads are joined here, not by static destructors at exit (which once aborted a rank with
    # "terminate called without an active exception" after its work was done)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1], sys.argv[2])
