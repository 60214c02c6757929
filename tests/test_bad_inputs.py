"""A table of bad inputs to every command: each ends with a one-line error naming the key, file or field, exit
status 2, no traceback, and leaves nothing in the run directory that a later correct run would trip over."""

import json
import shutil
from pathlib import Path

import pytest

from hub_standin import HubServer, custom_code_files, folder_files, no_template_files, prefill, use_cache
from poise.commands.cli import main

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REWARDS = FIXTURES / "bad_rewards.py"
# a 1-step `poise train` on the embedded default, small enough that a case which wrongly starts training ends fast
SMALL = ["--max_steps", "1", "--rollout.prompts_per_step", "4", "--optim.mini_batch_prompts", "4",
         "--task.train_size", "32", "--rollout.max_new_tokens", "8", "--report_to", "none", "--threads", "1"]


@pytest.fixture(scope="module")
def files(tmp_path_factory, micro_dir):
    d = tmp_path_factory.mktemp("bad")
    (d / "malformed.yaml").write_text("rollout:\n  group_size: 2\n max_steps: [3\n")
    (d / "empty.jsonl").write_text("")
    (d / "rows.jsonl").write_text("".join(json.dumps({"prompt": f"{i}+1=?", "answer": str(i + 1)}) + "\n"
                                          for i in range(40)))
    (d / "binary.jsonl").write_bytes(b"\xff\xfe\x00garbage\x81\n")
    (d / "a_directory.jsonl").mkdir()
    noweights = d / "noweights"
    noweights.mkdir()
    for f in micro_dir.iterdir():
        if not f.name.endswith((".safetensors", ".bin")):
            shutil.copy(f, noweights / f.name)
    (d / "fake.gguf").write_bytes(b"this is not a gguf file\n" * 10)
    (d / "notes.txt").write_text("not a model\n")
    # a finished run, resumed below with a changed config
    finished = d / "finished"
    assert main(["train", *SMALL, "--output_dir", str(finished), "--model.name", str(micro_dir)]) == 0
    return d


@pytest.fixture(scope="module")
def hub(tmp_path_factory, micro_dir):
    """Stand-ins for the Hugging Face Hub: (a cache holding org/micro, org/custom (its own code, auto_map) and org/base
    (no chat template), the URL of a server holding org/micro)."""
    cache = tmp_path_factory.mktemp("hub")
    micro = folder_files(micro_dir)
    for repo, files in (("org/micro", micro), ("org/custom", custom_code_files(micro)),
                        ("org/base", no_template_files(micro))):
        prefill(cache, repo, files)
    with HubServer({("model", "org/micro"): micro}) as server:
        yield cache, server.url


def reward(name: str) -> str:
    return f"{REWARDS}:{name}"


# (id, command, arguments (FILES/ is the fixture folder), text the error must contain)
CASES = [
    ("train-malformed-yaml", "train", ["--config", "FILES/malformed.yaml"], "malformed.yaml"),
    ("train-unknown-preset", "train", ["--config", "no_such_preset"], "no_such_preset"),
    ("train-unknown-key", "train", ["--rollout.group_sise", "4"], "rollout.group_sise"),
    ("train-bad-value", "train", ["--max_steps", "many"], "max_steps"),
    ("train-bad-choice", "train", ["--algorithm.advantage", "magic"], "algorithm.advantage"),
    ("train-zero-group", "train", ["--rollout.group_size", "0"], "rollout.group_size"),
    ("train-missing-data", "train", ["--task.name", "dataset", "--task.path", "FILES/missing.jsonl"], "missing.jsonl"),
    ("train-unreadable-data", "train", ["--task.name", "dataset", "--task.path", "FILES/binary.jsonl"],
     "binary.jsonl"),
    ("train-data-is-a-directory", "train", ["--task.name", "dataset", "--task.path", "FILES/a_directory.jsonl"],
     "a_directory.jsonl"),
    ("train-empty-dataset", "train", ["--task.name", "dataset", "--task.path", "FILES/empty.jsonl"], "empty.jsonl"),
    ("train-missing-column", "train", ["--task.name", "dataset", "--task.path", "FILES/rows.jsonl",
                                       "--task.answer_field", "solution_text"], "solution_text"),
    ("train-unknown-task", "train", ["--task.name", "no_such_task"], "task.name"),
    ("train-hub-dataset-not-cached", "train", ["--task.name", "dataset", "--task.path", "nobody/no-such-dataset"],
     "task.path: the dataset nobody/no-such-dataset is not in the Hugging Face cache"),
    ("train-subset-without-hub-dataset", "train", ["--task.subset", "main"], "task.subset"),
    ("train-bad-level", "train", ["--task.levels", "[t99z9]"], "task.levels"),
    ("train-unknown-task-option", "train", ["--task.name", "lcm", "--task.options", "no_such_key=1"],
     "task.options: lcm has no option 'no_such_key'; valid: "),
    ("train-bad-task-option-value", "train", ["--task.name", "lcm", "--task.options", "min_value=50,max_value=10"],
     "task.options: lcm level l0 with options"),
    ("train-bad-gym-level", "train", ["--task.name", "lcm", "--task.levels", "[l99]"],
     "task.levels: bad level 'l99' for lcm; levels: default, l0"),
    ("train-options-on-chain-sum", "train", ["--task.options", "max_value=5"], "task.options: chain_sum takes no"),
    ("train-refused-gym-task", "train", ["--task.name", "composite"], "task.name: composite cannot be used"),
    ("train-unknown-gym-task", "train", ["--task.name", "gcd_typo"], "task.name: unknown task 'gcd_typo'"),
    ("train-model-without-weights", "train", ["--model.name", "FILES/noweights"], "noweights"),
    ("train-missing-model", "train", ["--model.name", "FILES/no_such_model"], "no_such_model"),
    ("train-fake-gguf", "train", ["--model.name", "FILES/fake.gguf"], "fake.gguf is not a GGUF file"),
    ("train-model-not-a-model", "train", ["--model.name", "FILES/notes.txt"], "notes.txt"),
    ("train-hub-model-not-cached", "train", ["--model.name", "org/absent"], "`hf download org/absent`"),
    ("train-hub-revision-not-cached", "train", ["--model.name", "org/micro@v2"],
     "`hf download org/micro --revision v2`"),
    ("train-hub-unknown-repo", "train", ["--model.name", "HUB/org/absent"], "no model 'org/absent' on the Hub"),
    ("train-hub-bad-revision", "train", ["--model.name", "HUB/org/micro@v2"], "has no revision 'v2' on the Hub"),
    ("train-hub-remote-code", "train", ["--model.name", "org/custom"], "model.trust_remote_code: org/custom"),
    ("train-hub-no-chat-template", "train", ["--model.name", "org/base"], "org/base has no chat template"),
    ("train-layer-out-of-range", "train", ["--probe.layer", "99"], "probe.layer"),
    ("train-reward-raises", "train", ["--reward.function", reward("raises")], "reward.function"),
    ("train-reward-wrong-length", "train", ["--reward.function", reward("wrong_length")], "reward.function"),
    ("train-reward-strings", "train", ["--reward.function", reward("strings")], "reward.function"),
    ("train-reward-hangs", "train", ["--reward.function", reward("hangs"), "--reward.timeout", "1"],
     "reward.function"),
    ("train-reward-missing", "train", ["--reward.function", reward("no_such_function")], "reward.function"),
    ("train-budget-below-a-step", "train", ["--budget.samples", "3"], "budget.samples"),
    ("train-negative-micro-batch-tokens", "train", ["--optim.micro_batch_tokens", "-1"],
     "optim.micro_batch_tokens: must be >= 0"),
    ("train-negative-logit-chunk", "train", ["--optim.logit_chunk_tokens", "-8"], "optim.logit_chunk_tokens"),
    ("train-eval-negative-every", "train", ["--eval.every", "-1"], "eval.every"),
    ("train-eval-zero-k", "train", ["--eval.k", "0"], "eval.k"),
    ("train-eval-zero-problems", "train", ["--eval.num_problems", "0"], "eval.num_problems"),
    ("train-eval-zero-temperature", "train", ["--eval.temperature", "0"], "eval.temperature"),
    ("train-eval-bad-top-p", "train", ["--eval.top_p", "1.5"], "eval.top_p"),
    ("train-eval-negative-length", "train", ["--eval.max_new_tokens", "-1"], "eval.max_new_tokens"),
    ("train-eval-zero-batch", "train", ["--eval.batch_size", "0"], "eval.batch_size"),
    ("train-eval-repeated-task", "train", ["--eval.tasks", "[chain_sum, chain_sum]"], "eval.tasks"),
    ("train-eval-unknown-task", "train", ["--eval.every", "1", "--eval.tasks", "[no_such_task]"], "eval.tasks"),
    ("train-bad-tis-mode", "train", ["--rollout.tis_mode", "token_clip"], "rollout.tis_mode"),
    ("train-lora-dropout-with-dropout-off", "train", ["--model.lora_r", "2", "--model.lora_dropout", "0.1"],
     "model.lora_dropout: is switched off by model.disable_dropout"),
    ("train-response-beyond-positions", "train", ["--rollout.max_new_tokens", "600"],
     "plus rollout.max_new_tokens (600) is"),
    ("train-eval-response-beyond-positions", "train", ["--eval.every", "1", "--eval.max_new_tokens", "600"],
     "beyond the model's 512 positions"),
    ("train-resume-changed-config", "train", ["--output_dir", "FILES/finished", "--resume", "--optim.lr", "0.5"],
     "optim.lr"),
    ("eval-missing-model", "eval", ["--model.name", "FILES/no_such_model"], "no_such_model"),
    ("eval-hub-model-not-cached", "eval", ["--model.name", "org/absent"], "`hf download org/absent`"),
    ("eval-reward-raises", "eval", ["--reward_function", reward("raises"), "--num_problems", "4", "--k", "1"],
     "reward_function"),
    ("eval-bad-split", "eval", ["--split", "validation"], "split"),
    ("eval-unknown-task-option", "eval", ["--task.name", "lcm", "--task.options", "no_such_key=1"],
     "task.options: lcm has no option 'no_such_key'"),
    ("eval-response-beyond-positions", "eval", ["--max_new_tokens", "600", "--num_problems", "4", "--k", "1"],
     "max_new_tokens: the longest prompt"),
    ("eval-named-dataset-not-cached", "eval", ["--task.name", "gsm8k"], "openai/gsm8k"),
    ("sft-bad-level", "sft", ["--task.levels", "[t99z9]"], "task.levels"),
    ("sft-unknown-task-option", "sft", ["--task.name", "lcm", "--task.options", "no_such_key=1"],
     "task.options: lcm has no option 'no_such_key'"),
    ("sft-bad-gym-level", "sft", ["--task.name", "lcm", "--task.levels", "[l99]"], "task.levels: bad level 'l99'"),
    ("train-code-evaluation-set", "train", ["--task.name", "humaneval"], "task.name: humaneval is an evaluation set"),
    ("train-code-fusion-without-url", "train", ["--task.name", "humaneval", "--reward.code_backend", "sandbox_fusion"],
     "reward.sandbox_url: reward.code_backend sandbox_fusion needs the server's address"),
    ("train-code-fusion-unreachable", "train", ["--task.name", "humaneval", "--reward.code_backend", "sandbox_fusion",
                                                "--reward.sandbox_url", "http://127.0.0.1:9"],
     "reward.sandbox_url: SandboxFusion at http://127.0.0.1:9"),
    ("train-code-dataset-not-cached", "train", ["--task.name", "mbpp+gsm8k+gcd"],
     "task.name: mbpp: the dataset google-research-datasets/mbpp is not in the Hugging Face cache"),
    ("eval-code-fusion-unreachable", "eval", ["--task.name", "humaneval", "--code_backend", "sandbox_fusion",
                                              "--sandbox_url", "http://127.0.0.1:9"],
     "sandbox_url: SandboxFusion at http://127.0.0.1:9"),
    ("eval-code-bad-timeout", "eval", ["--task.name", "humaneval", "--code_timeout", "0"], "code_timeout: must be > 0"),
    ("sft-zero-steps", "sft", ["--steps", "0"], "steps"),
    ("sft-missing-data", "sft", ["--task.name", "dataset", "--task.path", "FILES/missing.jsonl"], "missing.jsonl"),
    ("sft-hub-model-not-cached", "sft", ["--model", "org/absent"], "model: the model org/absent is not in"),
    ("sft-hub-remote-code", "sft", ["--model", "org/custom"], "trust_remote_code: org/custom"),
    ("compare-unknown-method", "compare", ["--methods", "[poise, magic]"], "methods: 'magic'"),
    ("compare-zero-budget", "compare", ["--budget", "0"], "budget"),
    ("compare-bad-budget-key", "compare", ["--budget_key", "joules"], "budget_key"),
    ("compare-negative-reference-budget", "compare", ["--reference-budget", "-1"], "reference_budget: must be >= 0"),
    ("compare-bad-eval-level", "compare", ["--eval-levels", "[t99z9]"], "eval_levels: bad level 't99z9'"),
    ("probe-eval-missing-run", "probe-eval", ["--run", "FILES/no_such_run"], "no_such_run"),
    ("probe-eval-no-run", "probe-eval", [], "run"),
]


@pytest.mark.parametrize("command,args,needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_input_ends_in_one_line_naming_it(command, args, needle, files, micro_dir, hub, tmp_path, capsys,
                                                monkeypatch):
    run = tmp_path / "run"
    online = any(a.startswith("HUB/") for a in args)  # HUB/: the Hub server is reachable; else offline, cache only
    use_cache(monkeypatch, hub[0], hub[1] if online else None, offline=not online)
    args = [a.replace("FILES/", f"{files}/").removeprefix("HUB/") for a in args]
    out_flag = {"train": "--output_dir", "sft": "--output_dir", "compare": "--output_dir", "eval": "--output",
                "probe-eval": "--output"}[command]
    target = run if command != "eval" and command != "probe-eval" else run / "result.json"
    extra = [] if out_flag in args else [out_flag, str(target)]
    if command == "train":
        extra += SMALL + ([] if "--model.name" in args else ["--model.name", str(micro_dir)])
    try:
        code = main([command, *extra, *args])  # the case's own arguments last: they win
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert lines and lines[-1].startswith(f"poise {command}: "), err[-3000:]
    assert needle in lines[-1], lines[-1]
    assert sum("error" in line for line in lines) == 1, err[-3000:]
    # nothing a later correct run would trip over: no checkpoints, logs, models or results
    left = sorted(p.name for p in run.iterdir()) if run.is_dir() else []
    assert set(left) <= {"config.yaml"}, left


def test_a_correct_run_starts_where_bad_ones_failed(files, micro_dir, tmp_path, capsys):
    run = tmp_path / "run"
    for args in (["--probe.layer", "99"], ["--reward.function", reward("raises")], ["--budget.samples", "3"]):
        assert main(["train", *SMALL, "--model.name", str(micro_dir), "--output_dir", str(run), *args]) == 2
    assert main(["train", *SMALL, "--model.name", str(micro_dir), "--output_dir", str(run),
                 "--reward.function", reward("fine")]) == 0
    assert (run / "policy").is_dir() and len((run / "metrics.jsonl").read_text().splitlines()) == 1


@pytest.mark.parametrize("command", ["train", "sft", "eval", "compare", "probe-eval", "plot"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith(f"usage: poise {command}"), out[:500]
    if command == "sft":  # a field docstring with a literal percent sign (it once crashed argparse)
        assert "10%" in out
