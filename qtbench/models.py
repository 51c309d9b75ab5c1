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


def from_pretrained(auto_class: Any, path: str, entry: Mapping[str, Any], device: torch.device) -> Any:
    """``auto_class.from_pretrained`` under the project's loading rules: the
    entry's own revision, safetensors only, remote code only if the entry says
    so, the entry's dtype resolved for ``device``."""
    model = auto_class.from_pretrained(
        path,
        revision=entry.get("revision"),
        trust_remote_code=trust_remote_code(entry),
        dtype=resolve_dtype(entry.get("dtype", "auto"), device),
        use_safetensors=True,
    )
    return model.to(device)


def load_model(path: str, entry: Mapping[str, Any] | None = None, device: str | torch.device = "auto") -> Any:
    """A causal LM in train-ready form (SDPA attention where supported)."""
    from transformers import AutoModelForCausalLM

    entry = entry or {}
    device = resolve_device(device) if isinstance(device, str) else device
    check_model_path(path)
    from qtbench import adapters

    if adapters.is_adapter_folder(path):  # base + adapter, merged: a plain model for every caller
        return adapters.load_merged(path, lambda base, revision: load_model(base, {**entry, "revision": revision}, device))
    return from_pretrained(AutoModelForCausalLM, path, entry, device)


def reference_entry(model_entry: Mapping[str, Any], built_path: str | None = None) -> dict[str, Any] | None:
    """The reference model's own entry (Rho-1, TokenCleaning): ``name``,
    ``path``, ``revision``, ``dtype``, ``trust_remote_code``.

    ``models.<m>.reference`` is null (the reference_model rule fine-tunes the
    base model: ``built_path``, a local folder, no revision), a path or id
    (revision null, the base model's dtype) or a mapping ``{path, revision,
    dtype, trust_remote_code}``.  The reference never inherits the base model's
    revision (a commit of another repository), nor - unless it is the base
    model's own fine-tune - its ``trust_remote_code``.  None when there is no
    reference."""
    name = f"{model_entry.get('name', '<model>')}.reference"
    dtype = model_entry.get("dtype", "auto")
    ref = model_entry.get("reference")
    if ref is None:
        if built_path is None:
            return None
        return {"name": name, "path": str(built_path), "revision": None, "dtype": dtype,
                "trust_remote_code": trust_remote_code(model_entry)}
    if isinstance(ref, str) and ref:
        return {"name": name, "path": ref, "revision": None, "dtype": dtype, "trust_remote_code": False}
    if isinstance(ref, Mapping) and isinstance(ref.get("path"), str) and ref["path"]:
        out = {"name": name, "path": ref["path"], "revision": ref.get("revision"), "dtype": ref.get("dtype") or dtype,
               "trust_remote_code": ref.get("trust_remote_code", False)}
        out["trust_remote_code"] = trust_remote_code(out)
        return out
    raise ValueError(f"models.{name} must be null, a model path or id, or a mapping with 'path' "
                     f"(and optionally revision, dtype, trust_remote_code), got {ref!r}")


def reference_path(model_entry: Mapping[str, Any]) -> str | None:
    """The configured reference model's path or id (None: built by the reference_model rule)."""
    entry = reference_entry(model_entry)
    return None if entry is None else entry["path"]


def check_same_tokenizer(base: Any, reference: Any, key: str) -> None:
    """Refuse a reference model whose tokenizer is not the base model's: Rho-1
    and TokenCleaning subtract per-token losses of the same token ids, which
    means nothing across vocabularies.  Compares the vocabulary (token -> id)
    and the BOS / EOS / UNK ids; the error names the config ``key``."""
    problems = []
    base_vocab, ref_vocab = base.get_vocab(), reference.get_vocab()
    if base_vocab != ref_vocab:
        differ = sorted(set(base_vocab.items()) ^ set(ref_vocab.items()), key=lambda item: (item[1], item[0]))[:3]
        problems.append(f"vocabularies differ ({len(base_vocab)} vs {len(ref_vocab)} tokens; e.g. {differ})")
    for attr in ("bos_token_id", "eos_token_id", "unk_token_id"):
        b, r = getattr(base, attr, None), getattr(reference, attr, None)
        if b != r:
            problems.append(f"{attr} {b!r} (base) vs {r!r} (reference)")
    if problems:
        raise ValueError(f"config key {key!r}: the reference model's tokenizer differs from the base model's: "
                         f"{'; '.join(problems)}. Rho-1 and TokenCleaning compare per-token losses of the same "
                         "token ids: use a reference that shares the base model's tokenizer")


def load_reference(model_entry: Mapping[str, Any], path: str, base_tokenizer: Any,
                   device: str | torch.device = "auto") -> Any:
    """The reference model at ``path``, loaded with its own entry
    (:func:`reference_entry`) after checking its tokenizer against the base
    model's (:func:`check_same_tokenizer`)."""
    entry = reference_entry(model_entry, path)
    if entry is None:
        raise ValueError(f"models.{model_entry.get('name', '<model>')}.reference: no reference model")
    entry = {**entry, "path": str(path)}
    check_model_path(path)
    check_same_tokenizer(base_tokenizer, load_tokenizer(path, entry), f"models.{entry['name']}")
    return load_model(path, entry, device)


def load_encoder(path: str, entry: Mapping[str, Any] | None = None, device: str | torch.device = "auto") -> Any:
    """An embedding model (``AutoModel``: any architecture, e.g. a BERT-style
    encoder, or the body of a causal LM), with the same safety rules as
    :func:`load_model`: safetensors only, ``trust_remote_code`` as the entry says."""
    from transformers import AutoModel

    entry = entry or {}
    device = resolve_device(device) if isinstance(device, str) else device
    check_model_path(path)
    return from_pretrained(AutoModel, path, entry, device)


def count_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())
