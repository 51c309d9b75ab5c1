"""The reference model of Rho-1 / TokenCleaning has its own model entry (path,
revision, dtype), never the base model's revision, and must share the base
model's tokenizer (a clear error naming the config key otherwise)."""

from __future__ import annotations

import shutil

import pytest

from qtbench.config import ConfigError, read_config_file, validate_config
from qtbench.models import check_same_tokenizer, load_reference, load_tokenizer, reference_entry, reference_path

BASE = {"name": "llama2-7b", "path": "meta-llama/Llama-2-7b-hf", "revision": "abc123", "dtype": "bfloat16",
        "trust_remote_code": True}


def test_reference_entry_never_takes_the_base_models_revision():
    # a path or id: its own entry, revision null (main), the base model's dtype, no remote code
    assert reference_entry({**BASE, "reference": "org/llama2-7b-sft"}) == {
        "name": "llama2-7b.reference", "path": "org/llama2-7b-sft", "revision": None, "dtype": "bfloat16",
        "trust_remote_code": False}
    # a mapping: its own revision and dtype
    full = {"path": "org/llama2-7b-sft", "revision": "def456", "dtype": "float16"}
    assert reference_entry({**BASE, "reference": full}) == {
        "name": "llama2-7b.reference", "path": "org/llama2-7b-sft", "revision": "def456", "dtype": "float16",
        "trust_remote_code": False}
    assert reference_path({**BASE, "reference": full}) == "org/llama2-7b-sft"
    # null: built by the reference_model rule from the base model (a local folder: no revision)
    assert reference_entry({**BASE, "reference": None}) is None and reference_path({**BASE, "reference": None}) is None
    built = reference_entry({**BASE, "reference": None}, "results/x/models/llama2-7b/reference")
    assert built["revision"] is None and built["path"] == "results/x/models/llama2-7b/reference"
    with pytest.raises(ValueError, match="models.llama2-7b.reference.trust_remote_code"):
        reference_entry({**BASE, "reference": {"path": "org/r", "trust_remote_code": "yes"}})


def test_reference_config_key_accepts_an_entry():
    cfg = read_config_file(__import__("qtbench.config", fromlist=["x"]).default_config_path())
    cfg["models"]["tiny"]["reference"] = {"path": "org/ref", "revision": "def456", "dtype": "bfloat16"}
    assert validate_config(cfg)["models"]["tiny"]["reference"]["revision"] == "def456"
    cfg["models"]["tiny"]["reference"] = {"path": "org/ref", "rev": "def456"}
    with pytest.raises(ConfigError, match="models.tiny.reference"):
        validate_config(cfg)


def test_reference_loads_with_its_own_entry(monkeypatch, tiny_model_dir):
    import qtbench.models as models

    loaded = []
    monkeypatch.setattr(models, "load_model", lambda path, entry=None, device="auto": loaded.append((path, entry)))
    base_tok = load_tokenizer(str(tiny_model_dir))
    entry = {**BASE, "name": "tiny", "reference": {"path": str(tiny_model_dir), "revision": "def456"}}
    monkeypatch.setattr(models, "load_tokenizer", lambda path, entry=None: loaded.append(("tokenizer", entry)) or base_tok)
    load_reference(entry, str(tiny_model_dir), base_tok, "cpu")
    assert [e["revision"] for _, e in loaded] == ["def456", "def456"]
    assert all(e["dtype"] == "bfloat16" and e["trust_remote_code"] is False for _, e in loaded)


def test_reference_with_another_tokenizer_is_refused(tmp_path, tiny_model_dir):
    same, other = tmp_path / "same", tmp_path / "other"
    shutil.copytree(tiny_model_dir, same)
    shutil.copytree(tiny_model_dir, other)
    base_tok = load_tokenizer(str(tiny_model_dir))
    grown = load_tokenizer(str(other))
    grown.add_tokens(["<extra_token>"])  # e.g. an SFT'd reference that added a token
    grown.save_pretrained(other)
    entry = {"name": "tiny", "path": str(tiny_model_dir), "reference": str(other)}
    with pytest.raises(ValueError, match=r"config key 'models\.tiny\.reference'.*vocabularies differ"):
        load_reference(entry, str(other), base_tok, "cpu")
    assert load_reference({**entry, "reference": str(same)}, str(same), base_tok, "cpu") is not None


def test_special_tokens_compared():
    from tests.baselines.test_sample_pruners import char_tokenizer

    base, ref = char_tokenizer(), char_tokenizer()
    check_same_tokenizer(base, ref, "models.m.reference")  # identical: fine
    ref.eos_token = "<unk>"  # same vocabulary, another EOS
    with pytest.raises(ValueError, match=r"'models\.m\.reference'.*eos_token_id 2 \(base\) vs 3 \(reference\)"):
        check_same_tokenizer(base, ref, "models.m.reference")
