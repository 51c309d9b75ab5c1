"""LoRA runs save the adapter (plus tokenizer and a pointer to the base model),
evaluation loads base + adapter with the same scores as the merged model,
resume checkpoints hold only the trainable tensors, and `train.save_merged`
keeps the merged model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from qtbench import adapters
import qtbench.train.loop as train_mod
from qtbench.train.checkpoint import WEIGHTS_FILE
from qtbench.models import load_model
from qtbench.train.loop import train
from tests.test_evaluate_once import EVAL, counted, write_tasks  # noqa: F401 - fixture
from tests.train.test_loop import run_config

LORA = {"rank": 4, "alpha": 8, "dropout": 0.0, "target": "all-linear"}


def sizes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix == ".safetensors")


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    from tests.conftest import make_records

    tmp = tmp_path_factory.mktemp("lora")
    data = tmp / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in make_records()))
    adapter = tmp / "adapter"
    merged = tmp / "merged"
    train(run_config("q_tuning", "0.5", "0.5", max_steps=3, lora=LORA), adapter, str(tiny_model_dir), str(data),
          progress=False)
    train(run_config("q_tuning", "0.5", "0.5", max_steps=3, lora=LORA, save_merged=True), merged,
          str(tiny_model_dir), str(data), progress=False)
    return {"adapter": adapter, "merged": merged, "base": tiny_model_dir, "data": data, "tmp": tmp}


def test_a_lora_run_saves_its_adapter_tokenizer_and_base(runs):
    folder = runs["adapter"]
    assert adapters.is_adapter_folder(folder)
    names = {p.name for p in folder.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", adapters.BASE_POINTER,
            "train_summary.json", "trace.jsonl"} <= names
    assert "model.safetensors" not in names and "config.json" not in names
    assert adapters.base_of(folder) == (str(runs["base"]), None)
    # rank 4 on every linear layer of the tiny Llama (2 layers, hidden 32, MLP 64):
    # per layer q,k,v,o 4 x 4 x (32 + 32) + gate, up 2 x 4 x (32 + 64) + down 4 x (64 + 32) = 2176; x 2 = 4352 fp32
    from safetensors import safe_open

    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
        assert sum(f.get_tensor(k).numel() for k in f.keys()) == 4352
    assert sizes(folder) < sizes(runs["merged"]) / 4


def test_adapter_merged_on_load_equals_the_saved_merged_model(runs):
    from_adapter = load_model(str(runs["adapter"]), device="cpu").state_dict()
    merged = load_model(str(runs["merged"]), device="cpu").state_dict()
    assert from_adapter.keys() == merged.keys()
    for key in merged:
        torch.testing.assert_close(from_adapter[key], merged[key], rtol=0, atol=1e-6)


def test_evaluation_of_base_plus_adapter_scores_as_the_merged_model(runs, tmp_path, counted):  # noqa: F811
    from qtbench.evaluate import evaluate

    tasks = write_tasks(tmp_path / "tasks")
    cfg = {**EVAL, "tasks": [{"name": "qt_mc", "num_fewshot": 0}]}
    with_adapter = evaluate(str(runs["adapter"]), cfg, tmp_path / "a.json", tasks_dir=tasks)
    assert counted["loads"] == 1
    merged = evaluate(str(runs["merged"]), cfg, tmp_path / "m.json", tasks_dir=tasks)
    assert with_adapter["scores"] == merged["scores"]
    assert with_adapter["adapter"] == {"base_model": str(runs["base"]), "revision": None}
    items = [json.loads(x) for x in (tmp_path / "a.items.jsonl").read_text().splitlines()]
    assert items == [json.loads(x) for x in (tmp_path / "m.items.jsonl").read_text().splitlines()]


def test_resume_checkpoints_of_a_lora_run_hold_only_the_adapter(runs, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    cfg = run_config("q_tuning", "0.5", "0.5", max_steps=3, lora=LORA, checkpoint_every=1)
    state = tmp_path / "state"
    out = tmp_path / "resumed"

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:  # the job dies while writing its output, after 2 checkpoints
        patch.setattr(train_mod, "write_json_atomic", disk_full)
        with pytest.raises(OSError):
            train(cfg, out, str(runs["base"]), str(runs["data"]), state_dir=state, progress=False)
    saved = load_file(str(state / "checkpoint" / WEIGHTS_FILE))
    assert saved and all("lora_" in name for name in saved)
    assert sum(t.numel() for t in saved.values()) == 4352
    train(cfg, out, str(runs["base"]), str(runs["data"]), state_dir=state, progress=False)
    resumed = load_file(str(out / "adapter_model.safetensors"))
    uninterrupted = load_file(str(runs["adapter"] / "adapter_model.safetensors"))
    assert resumed.keys() == uninterrupted.keys()
    for key in resumed:
        torch.testing.assert_close(resumed[key], uninterrupted[key], rtol=0, atol=0)
