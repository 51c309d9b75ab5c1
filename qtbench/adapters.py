"""LoRA runs keep their adapter, not a merged copy of the base model.

A LoRA run (``train.lora.rank > 0``) writes its checkpoint folder as a peft
adapter: ``adapter_model.safetensors`` and ``adapter_config.json`` (rank 8 on
all linear layers of a 7B model: ~20M parameters, ~40 MB in bf16, where the
merged model is ~13.5 GB), the tokenizer, and ``qtbench_base_model.json``, which
names the base model and its revision.  Evaluation loads base + adapter
(lm-eval's ``peft=``); :func:`qtbench.models.load_model` merges it on load for
everything else (the reference model of Rho-1, ``qtbench eu-plane``).
``train.save_merged: true`` writes the merged model instead, as before.

Resume checkpoints of a LoRA run hold only the trainable tensors
(:func:`trainable_state`): the frozen weights are the base model's, which the
run's fingerprint pins.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
BASE_POINTER = "qtbench_base_model.json"


def is_adapter_folder(path: str | Path) -> bool:
    """True for a folder holding a peft adapter rather than a full model."""
    folder = Path(path)
    return folder.is_dir() and (folder / ADAPTER_CONFIG).is_file() and not (folder / "config.json").is_file()


def is_lora_model(model: Any) -> bool:
    """True for a peft-wrapped model (``train.lora.rank > 0``)."""
    return hasattr(model, "peft_config")


def saves_adapter(tcfg: Mapping[str, Any]) -> bool:
    """Does a run with this train section write an adapter (LoRA, not ``save_merged``)?"""
    return int((tcfg.get("lora") or {}).get("rank", 0) or 0) > 0 and not tcfg.get("save_merged", False)


def save_adapter(model: Any, tokenizer: Any, folder: str | Path, base_model: str, entry: Mapping[str, Any]) -> None:
    """Write the adapter, the tokenizer and the pointer to the base model into
    ``folder`` (the caller's atomic temporary folder).  The base is recorded as
    given (a hub id, or a path relative to the working directory) and, for a
    local folder, also as an absolute path."""
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    local = Path(base_model).expanduser()
    pointer = {"base_model": str(base_model), "revision": entry.get("revision"),
               "absolute": str(local.resolve()) if local.exists() else None}
    (folder / BASE_POINTER).write_text(json.dumps(pointer, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def base_of(folder: str | Path) -> tuple[str, str | None]:
    """The base model (path or hub id) and revision an adapter folder was trained on."""
    path = Path(folder) / BASE_POINTER
    try:
        pointer = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        config = json.loads((Path(folder) / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        base = config.get("base_model_name_or_path")
        if not base:
            raise FileNotFoundError(f"adapter folder {folder} names no base model ({BASE_POINTER} is missing)") from None
        return str(base), config.get("revision")
    base = pointer["base_model"]
    if not Path(base).expanduser().exists() and pointer.get("absolute") and Path(pointer["absolute"]).exists():
        base = pointer["absolute"]  # read from another working directory
    return base, pointer.get("revision")


def check_adapter_folder(folder: str | Path) -> None:
    """Fail early, naming the file, when an adapter folder is incomplete."""
    folder = Path(folder)
    if not (folder / ADAPTER_WEIGHTS).is_file():
        found = sorted(p.name for p in folder.iterdir())[:10]
        raise FileNotFoundError(f"adapter folder {folder} has no {ADAPTER_WEIGHTS} (found: {found})")


def load_merged(folder: str | Path, loader: Any) -> Any:
    """The base model with the adapter of ``folder`` merged in; ``loader(base,
    revision)`` loads the base model (qtbench.models.load_model's own path)."""
    from peft import PeftModel

    base, revision = base_of(folder)
    model = loader(base, revision)
    return PeftModel.from_pretrained(model, str(folder), is_trainable=False).merge_and_unload()


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    """The tensors a resume checkpoint of a LoRA run needs: the trainable ones
    (the adapters), by their ``state_dict`` names, contiguous for safetensors."""
    return {name: param.detach().contiguous() for name, param in model.named_parameters() if param.requires_grad}


def load_trainable_state(model: Any, weights: Mapping[str, torch.Tensor]) -> None:
    """Load :func:`trainable_state` back; every trainable tensor must be there
    and nothing else (a checkpoint of another adapter shape fails, naming it)."""
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    missing, extra = sorted(trainable - set(weights)), sorted(set(weights) - trainable)
    if missing or extra:
        raise ValueError(f"resume checkpoint does not match the model's trainable tensors "
                         f"(missing: {missing[:3]}, unexpected: {extra[:3]})")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))
