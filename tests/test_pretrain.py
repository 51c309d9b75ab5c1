"""The world's base model: a short pretraining run saves a loadable
model + tokenizer (safetensors), lowers the corpus loss, and is deterministic."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from qtbench.world.generate import build_world
from qtbench.world.pretrain import DEFAULTS, pretrain_base_model, resolve_config

SMALL_WORLD = {"n_countries": 24, "n_people": 6, "n_sft": 120, "n_reference": 20, "n_eval_per_task": 10,
               "arith_max": 10}
TINY = {"vocab_size": 400, "hidden_size": 32, "n_layers": 2, "n_heads": 2, "intermediate_size": 64,
        "seq_len": 64, "batch_size": 8, "steps": 40, "lr": 5e-3, "warmup_steps": 5, "max_minutes": 2.0}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("small_world")
    build_world(SMALL_WORLD, out)
    return out


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("base_model")
        summary = pretrain_base_model(world, TINY, out, seed=0)
    finally:
        torch.set_num_threads(threads)
    return out, summary


def test_saves_loadable_model_and_tokenizer(trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, summary = trained
    assert (out / "model.safetensors").exists()
    assert not list(out.glob("*.bin"))
    assert (out / "tokenizer.json").exists()
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.model_type == "llama"
    assert model.config.vocab_size == len(tok)
    assert sum(p.numel() for p in model.parameters()) == summary["n_params"]
    assert model.config.eos_token_id == tok.eos_token_id
    assert model.config.pad_token_id == tok.pad_token_id
    # generation runs
    ids = tok("The capital of", return_tensors="pt")["input_ids"]
    gen = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert gen.shape[1] > ids.shape[1]


def test_tokenizer_roundtrip_and_specials(trained):
    from transformers import AutoTokenizer

    out, _ = trained
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.bos_token == "<s>" and tok.eos_token == "</s>" and tok.pad_token == "<pad>"
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}) == 3
    text = "Question: What is the capital of Zorbia?\nAnswer: Velmar 17 + 25 = 42. #### 42 \u00e9!"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text  # byte-level: any string round-trips
    with_specials = tok(text)["input_ids"]
    # BOS is prepended (as qtbench.data does by hand), EOS never appended
    # (lm-eval splits context/continuation by token counts)
    assert with_specials[0] == tok.bos_token_id and with_specials[1:] == ids
    assert tok.eos_token_id not in with_specials


def test_loss_decreases_and_summary_written(trained):
    out, summary = trained
    on_disk = json.loads((out / "pretrain_summary.json").read_text())
    assert on_disk["corpus_loss_after"] == summary["corpus_loss_after"]
    assert summary["corpus_loss_after"] < summary["corpus_loss_before"] - 0.5
    assert summary["steps"] == TINY["steps"] and not summary["stopped_early"]
    for key in ("n_params", "train_seconds", "wall_seconds", "corpus_tokens", "sft_response_loss"):
        assert key in summary
    assert "clean/fact_covered" in summary["sft_response_loss"]


def test_same_seed_same_weights(world, trained, tmp_path):
    out, _ = trained
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pretrain_base_model(world, TINY, tmp_path / "again", seed=0)
    finally:
        torch.set_num_threads(threads)

    def digest(p: Path) -> str:
        return hashlib.sha256(p.read_bytes()).hexdigest()

    assert digest(out / "model.safetensors") == digest(tmp_path / "again" / "model.safetensors")
    assert digest(out / "tokenizer.json") == digest(tmp_path / "again" / "tokenizer.json")


def test_config_validation():
    assert resolve_config({}) == DEFAULTS
    with pytest.raises(ValueError, match="n_experts"):
        resolve_config({"n_experts": 4})
    with pytest.raises(ValueError, match="divisible"):
        resolve_config({"hidden_size": 30, "n_heads": 4})
