"""Loading models and tokenizers safely, from a Hugging Face id or a local path.

Weights are read as safetensors only (``use_safetensors=True``; a local
folder with only pickled ``*.bin`` weights is refused before transformers sees
it) and ``trust_remote_code`` is whatever the config says for that model, as a
boolean (default false).  On CPU models run in fp32; on CUDA ``dtype: auto`` means bf16.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import torch

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return _DTYPES[name]


def trust_remote_code(entry: Mapping[str, Any] | None) -> bool:
    """The model entry's ``trust_remote_code``: true only when the config says
    so for this model, as a boolean (a string such as ``"false"`` is an error,
    never silently truthy)."""
    value = (entry or {}).get("trust_remote_code", False)
    if value is None:
        return False
    if not isinstance(value, bool):
        name = (entry or {}).get("name", "<model>")
        raise ValueError(f"models.{name}.trust_remote_code must be true or false, got {value!r}")
    return value


def looks_local(path: str) -> bool:
    """True for what can only be a file-system path (a Hugging Face id is
    ``name`` or ``org/name``)."""
    text = str(path)
    return text.startswith(("/", "./", "../", "~")) or text in (".", "..") or text.count("/") > 1 or "\\" in text


def check_model_path(path: str) -> None:
    """Fail early, naming the path, when a local model folder is missing or has
    no safetensors weights (pickled ``*.bin`` weights are refused)."""
    local = Path(path).expanduser()
    from qtbench import adapters

    if adapters.is_adapter_folder(local):  # a LoRA run's output: its adapter and its base model
        adapters.check_adapter_folder(local)
        check_model_path(adapters.base_of(local)[0])
        return
    if local.exists():
        if not local.is_dir():
            raise FileNotFoundError(f"model path {local} is a file; expected a save_pretrained folder")
        if not any(local.glob("*.safetensors")):
            found = sorted(p.name for p in local.iterdir())[:10]
            raise FileNotFoundError(f"model folder {local} has no *.safetensors weights (found: {found})")
        if not (local / "config.json").exists():
            raise FileNotFoundError(f"model folder {local} has no config.json")
    elif looks_local(str(path)):
        raise FileNotFoundError(f"model folder {local} does not exist")


def load_tokenizer(path: str, entry: Mapping[str, Any] | None = None) -> Any:
    from transformers import AutoTokenizer

    entry = entry or {}
    tokenizer = AutoTokenizer.from_pretrained(
        path, revision=entry.get("revision"), trust_remote_code=trust_remote_code(entry)
    )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: str, entry: Mapping[str, Any] | None = None, device: str | torch.device = "auto") -> Any:
    """A causal LM in train-ready form (SDPA attention where supported)."""
    from transformers import AutoModelForCausalLM

    entry = entry or {}
    device = resolve_device(device) if isinstance(device, str) else device
    check_model_path(path)
    from qtbench import adapters

    if adapters.is_adapter_folder(path):  # base + adapter, merged: a plain model for every caller
        return adapters.load_merged(path, lambda base, revision: load_model(base, {**entry, "revision": revision}, device))
    model = AutoModelForCausalLM.from_pretrained(
        path,
        revision=entry.get("revision"),
        trust_remote_code=trust_remote_code(entry),
        dtype=resolve_dtype(entry.get("dtype", "auto"), device),
        use_safetensors=True,
    )
    return model.to(device)


def load_encoder(path: str, entry: Mapping[str, Any] | None = None, device: str | torch.device = "auto") -> Any:
    """An embedding model (``AutoModel``: any architecture, e.g. a BERT-style
    encoder, or the body of a causal LM), with the same safety rules as
    :func:`load_model`: safetensors only, ``trust_remote_code`` as the entry says."""
    from transformers import AutoModel

    entry = entry or {}
    device = resolve_device(device) if isinstance(device, str) else device
    check_model_path(path)
    model = AutoModel.from_pretrained(
        path,
        revision=entry.get("revision"),
        trust_remote_code=trust_remote_code(entry),
        dtype=resolve_dtype(entry.get("dtype", "auto"), device),
        use_safetensors=True,
    )
    return model.to(device)


def count_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())
