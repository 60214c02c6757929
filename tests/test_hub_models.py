"""Hugging Face Hub model IDs (`--model.name org/name[@revision]`) in every command, against local stand-ins for the
Hub (tests/hub_standin.py): a pre-filled cache read offline, and a server on 127.0.0.1 for real downloads."""

import json

import pytest
import torch

from hub_standin import (COMMIT, HubServer, custom_code_files, folder_files, no_template_files, prefill,
                         use_cache)
from poise.commands.cli import main
from poise.io.errors import HubError
from poise.rollout.models import build_tiny_model, load_local, load_policy

OTHER = "fedcba9876543210fedcba9876543210fedcba98"  # the commit of a second revision in the cache


@pytest.fixture(scope="module")
def micro_files(micro_dir):
    """The micro model's repository files (config, tokenizer, chat template, model.safetensors)."""
    return folder_files(micro_dir)


@pytest.fixture(scope="module")
def other_files(micro_dir, tmp_path_factory):
    """The same architecture and tokenizer with other weights (seed 1): a second revision."""
    _, tok = load_local(micro_dir)
    path = tmp_path_factory.mktemp("micro_seed1")
    build_tiny_model("micro", tok, seed=1).save_pretrained(path)
    tok.save_pretrained(path)
    return folder_files(path)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty Hub cache, offline (as the suite runs)."""
    path = tmp_path / "hub"
    path.mkdir()
    use_cache(monkeypatch, path)
    return path


def same_weights(model, files: dict, tmp_path) -> bool:
    """Whether `model` holds exactly the weights of the repository `files`."""
    folder = tmp_path / f"expected{len(list(tmp_path.iterdir()))}"
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    expected = load_local(folder)[0].state_dict()
    got = model.state_dict()
    return got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)


def downloaded(hub: HubServer) -> set[str]:
    """The repository files the server sent (/org/name/resolve/<revision>/<path>)."""
    return {r.split("/resolve/", 1)[1].split("/", 1)[1] for r in hub.requests if "/resolve/" in r}


def last_error(capsys) -> str:
    """The one error line a failed command printed last (download progress bars may come before it)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and sum("error" in line for line in lines) == 1, err[-3000:]
    return lines[-1]


# ---------------------------------------------------------------------------------------------------------------------
# Resolution: the cache, revisions, downloads
# ---------------------------------------------------------------------------------------------------------------------


def test_a_hub_id_loads_from_the_cache_offline_and_revisions_pick_the_snapshot(cache, micro_files, other_files,
                                                                                tmp_path):
    prefill(cache, "org/micro", micro_files)
    prefill(cache, "org/micro", other_files, revision="v1", commit=OTHER)
    main_model, tok = load_policy("org/micro")
    assert same_weights(main_model, micro_files, tmp_path)
    assert tok.chat_template and tok.padding_side == "left"
    v1 = load_policy("org/micro@v1")[0]
    assert same_weights(v1, other_files, tmp_path) and not same_weights(v1, micro_files, tmp_path)
    assert same_weights(load_policy(f"org/micro@{OTHER}")[0], other_files, tmp_path)  # a commit hash
    with pytest.raises(HubError, match=r"^model\.name: .*org/micro@v2.*hf download org/micro --revision v2"):
        load_policy("org/micro@v2")  # a revision that is not cached, offline


def test_a_local_folder_of_the_same_name_wins(cache, micro_files, other_files, tmp_path, monkeypatch):
    prefill(cache, "org/micro", micro_files)
    local = tmp_path / "cwd" / "org" / "micro"
    for rel, data in other_files.items():
        (local / rel).parent.mkdir(parents=True, exist_ok=True)
        (local / rel).write_bytes(data)
    monkeypatch.chdir(tmp_path / "cwd")
    assert same_weights(load_policy("org/micro")[0], other_files, tmp_path)


def test_a_download_fetches_what_a_causal_lm_needs_then_loads_offline(cache, micro_files, monkeypatch, tmp_path):
    extras = {"README.md": b"# micro\n", "pytorch_model.bin": b"not read", "onnx/model.onnx": b"not read",
              "modeling_extra.py": b"raise SystemExit('remote code ran')\n", "images/plot.png": b"\x89PNG"}
    with HubServer({("model", "org/micro"): {**micro_files, **extras}}) as hub:
        use_cache(monkeypatch, cache, hub.url, offline=False)
        model, _ = load_policy("org/micro")
        fetched = downloaded(hub)
    assert same_weights(model, micro_files, tmp_path)
    assert fetched == set(micro_files), fetched  # config, tokenizer, chat template, safetensors; none of the extras
    snap = cache / "models--org--micro" / "snapshots" / COMMIT
    assert sorted(p.name for p in snap.iterdir()) == sorted(micro_files)
    use_cache(monkeypatch, cache, offline=True)  # the server is gone: the same ID now comes from the cache
    assert same_weights(load_policy("org/micro")[0], micro_files, tmp_path)


def test_pytorch_bin_weights_are_fetched_only_without_safetensors(cache, micro_files, micro_dir, monkeypatch,
                                                                  tmp_path):
    from safetensors.torch import load_file

    bin_path = tmp_path / "pytorch_model.bin"
    torch.save(load_file(str(micro_dir / "model.safetensors")), bin_path)
    files = {**{k: v for k, v in micro_files.items() if not k.endswith(".safetensors")},
             "pytorch_model.bin": bin_path.read_bytes(), "flax_model.msgpack": b"not read"}
    with HubServer({("model", "org/old"): files}) as hub:
        use_cache(monkeypatch, cache, hub.url, offline=False)
        model, _ = load_policy("org/old")
        fetched = downloaded(hub)
    assert "pytorch_model.bin" in fetched and "flax_model.msgpack" not in fetched
    assert same_weights(model, micro_files, tmp_path)


# ---------------------------------------------------------------------------------------------------------------------
# Errors: one line, exit status 2
# ---------------------------------------------------------------------------------------------------------------------


TRAIN = ["train", "--max_steps", "1", "--rollout.prompts_per_step", "4", "--optim.mini_batch_prompts", "4",
         "--task.train_size", "32", "--rollout.max_new_tokens", "8", "--report_to", "none", "--threads", "1"]


def test_offline_with_nothing_cached_names_the_model_and_the_download_command(cache, tmp_path, capsys):
    assert main([*TRAIN, "--output_dir", str(tmp_path / "run"), "--model.name", "org/absent"]) == 2
    line = last_error(capsys)
    assert line.startswith("poise train: error: model.name:") and "org/absent" in line, line
    assert "`hf download org/absent`" in line and "HF_HUB_OFFLINE" in line and str(cache) in line, line


def test_an_unknown_repository_and_a_bad_revision_on_the_hub(cache, micro_files, monkeypatch, tmp_path, capsys):
    with HubServer({("model", "org/micro"): micro_files}) as hub:
        use_cache(monkeypatch, cache, hub.url, offline=False)
        assert main([*TRAIN, "--output_dir", str(tmp_path / "a"), "--model.name", "org/absent"]) == 2
        line = last_error(capsys)
        assert "model.name: no model 'org/absent' on the Hub" in line, line
        assert main([*TRAIN, "--output_dir", str(tmp_path / "b"), "--model.name", "org/micro@no-such-branch"]) == 2
        line = last_error(capsys)
        assert "model.name: the model org/micro@no-such-branch has no revision 'no-such-branch'" in line, line


def test_remote_code_is_refused_unless_allowed(cache, micro_files, monkeypatch, tmp_path, capsys):
    import transformers.dynamic_module_utils as dynamic

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    with HubServer({("model", "org/custom"): custom_code_files(micro_files)}) as hub:
        use_cache(monkeypatch, cache, hub.url, offline=False)
        assert main([*TRAIN, "--output_dir", str(tmp_path / "run"), "--model.name", "org/custom"]) == 2
        line = last_error(capsys)
        assert "model.trust_remote_code: org/custom needs its own Python code" in line, line
        assert "--model.trust_remote_code true" in line and "poise_micro_custom" in line, line
        assert not any(r.endswith(".py") for r in hub.requests)  # its code was not even downloaded
        model, _ = load_policy("org/custom", trust_remote_code=True)
        assert any(r.endswith("/modeling_custom.py") for r in hub.requests)
        assert type(model).__name__ == "MicroCustomForCausalLM" and type(model).made_by_remote_code
        assert same_weights(model, micro_files, tmp_path)
        run = tmp_path / "allowed"
        assert main([*TRAIN, "--output_dir", str(run), "--model.name", "org/custom", "--model.trust_remote_code",
                     "true"]) == 0
    with pytest.raises(ValueError, match="model.trust_remote_code"):  # the trained policy keeps its code
        load_local(run / "policy")
    assert type(load_local(run / "policy", trust_remote_code=True)[0]).__name__ == "MicroCustomForCausalLM"


def test_a_model_without_a_chat_template_is_named(cache, micro_files, tmp_path, capsys):
    prefill(cache, "org/base", no_template_files(micro_files))
    assert main([*TRAIN, "--output_dir", str(tmp_path / "run"), "--model.name", "org/base"]) == 2
    line = last_error(capsys)
    assert line.startswith("poise train: error: model.name: org/base has no chat template"), line


# ---------------------------------------------------------------------------------------------------------------------
# Every command
# ---------------------------------------------------------------------------------------------------------------------


def test_train_from_a_hub_id_offline(cache, micro_files, tiny_run, tmp_path):
    from poise.train.loop import train

    prefill(cache, "org/micro", micro_files)
    last = train(tiny_run(tmp_path, **{"model.name": "org/micro"}), progress=False)
    assert torch.isfinite(torch.tensor(last["loss/policy"]))
    trained, _ = load_local(tmp_path / "run" / "policy")
    assert not same_weights(trained, micro_files, tmp_path)  # the cached model was loaded, then trained
    assert "name: org/micro" in (tmp_path / "run" / "config.yaml").read_text()


def test_the_reference_model_and_the_ppo_critic_of_a_hub_policy(cache, micro_files, tiny_run, tmp_path):
    """Both are copies of the policy (train/state.py), so they start from the Hub model's weights."""
    from poise.train.loop import train

    prefill(cache, "org/micro", micro_files)
    cfg = tiny_run(tmp_path, "ppo", **{"model.name": "org/micro", "loss.kl_coef": 0.1})
    last = train(cfg, progress=False)
    assert last["kl/ref"] >= 0 and torch.isfinite(torch.tensor(last["critic/value_loss"]))
    assert (tmp_path / "run" / "critic").is_dir()


def test_eval_with_a_hub_id(cache, micro_files, micro_dir, tmp_path):
    """The Hub ID evaluates exactly as the folder it was made from."""
    prefill(cache, "org/micro", micro_files)

    def evaluate(name: str, out):
        assert main(["eval", "--model.name", name, "--task.name", "parity_test", "--num-problems", "4", "--k", "2",
                     "--max-new-tokens", "6", "--threads", "1", "--output", str(out)]) == 0
        summary = json.loads(out.with_name(out.name + ".summary.json").read_text())
        return [json.loads(line) for line in out.read_text().splitlines()], summary

    rows, summary = evaluate("org/micro@main", tmp_path / "hub.jsonl")
    local_rows, _ = evaluate(str(micro_dir), tmp_path / "local.jsonl")
    assert len(rows) == 4 and summary["model"] == "org/micro@main"
    assert rows == local_rows


def test_sft_from_a_hub_id(cache, micro_files, tmp_path, capsys):
    prefill(cache, "org/micro", micro_files)
    out = tmp_path / "sft"
    assert main(["sft", "--model", "org/micro", "--output-dir", str(out), "--steps", "2", "--batch-size", "4",
                 "--warmup-steps", "1", "--task.levels", "[t2d1]", "--task.train_size", "32", "--task.eval_size", "4",
                 "--eval-samples", "1", "--max-new-tokens", "4", "--threads", "1"]) == 0
    tuned, _ = load_local(out)
    assert not same_weights(tuned, micro_files, tmp_path)
    assert main(["sft", "--model", "org/absent", "--output-dir", str(tmp_path / "o")]) == 2
    line = last_error(capsys)
    assert line.startswith("poise sft: error: model: ") and "hf download org/absent" in line, line
