"""Pretrain the world's tiny base model: a byte-level BPE tokenizer and a
~1M-parameter Llama trained on ``corpus.txt`` only.

Why: the default qtbench run needs a *base model that knows some things and
not others*, built offline in a few CPU minutes.  The model learns the covered
facts and arithmetic from declarative text; it never sees a question/answer
pair, so SFT has something to teach (the answer format, uncovered facts,
two-hop reasoning, reading comprehension) while SFT items on covered facts are
already easy (low loss) -- the redundancy the EU plane is meant to find.

The tokenizer is trained on the corpus *and* the SFT/reference texts, so SFT
words are tokenized sensibly; the model itself only ever trains on the corpus.
The saved tokenizer prepends ``<s>`` when asked for special tokens (so
lm-eval's default encoding matches ``qtbench.data``, which adds BOS itself)
and never appends ``</s>`` (lm-eval splits context/continuation by length).

Determinism: model init and data order come from ``seed``; with a fixed
``torch`` thread count two runs give the same weights.  ``max_minutes`` is a
safety stop -- if it triggers, the run is cut short and the summary says so
(``stopped_early``); size ``steps`` so it does not.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from pathlib import Path
from typing import Any, Iterable

import torch

from qtbench.io import read_jsonl

DEFAULTS: dict[str, Any] = {
    "vocab_size": 1536,
    "hidden_size": 128,
    "n_layers": 4,
    "n_heads": 4,
    "intermediate_size": 384,
    "seq_len": 128,
    "batch_size": 32,
    # ~20 epochs of the default corpus: the covered/uncovered gap on SFT
    # fact QA peaks here; longer runs memorise the corpus's exact documents
    # and transfer worse to the question format (measured)
    "steps": 450,
    "lr": 3.0e-3,
    "warmup_steps": 30,
    "weight_decay": 0.1,
    "max_minutes": 15.0,  # safety stop only (a run cut by it is not reproducible)
}

SPECIAL_TOKENS = ["<s>", "</s>", "<pad>"]
MAX_POSITIONS = 512


def resolve_config(cfg: dict | None) -> dict:
    """``DEFAULTS`` merged with ``cfg``; an unknown key raises ``ValueError`` naming it."""
    out = copy.deepcopy(DEFAULTS)
    for key, value in (cfg or {}).items():
        if key not in DEFAULTS:
            raise ValueError(f"unknown pretrain config key: {key!r} (known: {', '.join(sorted(DEFAULTS))})")
        out[key] = value
    for key in ("vocab_size", "hidden_size", "n_layers", "n_heads", "intermediate_size", "seq_len",
                "batch_size", "steps", "warmup_steps"):
        if int(out[key]) != out[key] or out[key] < 0:
            raise ValueError(f"pretrain config key {key!r} must be a non-negative integer, got {out[key]!r}")
        out[key] = int(out[key])
    for key in ("lr", "weight_decay", "max_minutes"):
        out[key] = float(out[key])
    if out["hidden_size"] % max(1, out["n_heads"]):
        raise ValueError("hidden_size must be divisible by n_heads")
    if not 2 <= out["seq_len"] <= MAX_POSITIONS:
        raise ValueError(f"seq_len must be in [2, {MAX_POSITIONS}]")
    return out


# ---------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------


def _read_jsonl(path: Path) -> list[dict]:
    return read_jsonl(path) if path.exists() else []


def read_corpus(path: Path) -> list[str]:
    """Corpus documents: separated by a blank line (a document may span lines)."""
    text = path.read_text(encoding="utf-8")
    return [d.strip() for d in text.split("\n\n") if d.strip()]


def _sft_texts(world_dir: Path) -> list[str]:
    from qtbench.data.template import format_prompt

    texts = []
    for name in ("sft.jsonl", "reference.jsonl"):
        for rec in _read_jsonl(world_dir / name):
            prompt, response = format_prompt(rec)
            texts.append(prompt + response)
    return texts


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """Byte-level BPE (any string encodes; no unknown tokens), wrapped as a
    ``PreTrainedTokenizerFast`` with ``<s>``/``</s>``/``<pad>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        model_max_length=MAX_POSITIONS,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )


# ---------------------------------------------------------------------------
# Model and data
# ---------------------------------------------------------------------------


def build_model(cfg: dict, tokenizer) -> Any:
    """A tiny Llama with tied embeddings (saves a vocab x hidden matrix)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_hidden_layers=cfg["n_layers"],
        num_attention_heads=cfg["n_heads"],
        num_key_value_heads=cfg["n_heads"],
        max_position_embeddings=MAX_POSITIONS,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def _encode_lines(lines: list[str], tokenizer) -> list[list[int]]:
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    enc = tokenizer(lines, add_special_tokens=False)["input_ids"]
    return [[bos] + ids + [eos] for ids in enc]


def _blocks(docs: list[list[int]], seq_len: int) -> torch.Tensor:
    """Concatenate documents and cut into ``[N, seq_len]`` blocks (the tail is dropped)."""
    stream = [t for d in docs for t in d]
    n = len(stream) // seq_len
    return torch.tensor(stream[: n * seq_len], dtype=torch.long).view(n, seq_len)


class _EpochStream:
    """Shuffles document order every epoch (seeded), so blocks differ across epochs."""

    def __init__(self, docs: list[list[int]], seq_len: int, batch_size: int, seed: int):
        self.docs, self.seq_len, self.batch_size = docs, seq_len, batch_size
        self.rng = random.Random(seed)
        self.epoch = 0
        self._new_epoch()

    def _new_epoch(self) -> None:
        order = list(range(len(self.docs)))
        self.rng.shuffle(order)
        self.data = _blocks([self.docs[i] for i in order], self.seq_len)
        if len(self.data) < self.batch_size:  # tiny corpora: repeat to fill a batch
            reps = math.ceil(self.batch_size / max(1, len(self.data)))
            self.data = self.data.repeat(reps, 1)
        self.pos = 0
        self.epoch += 1

    def next(self) -> torch.Tensor:
        if self.pos + self.batch_size > len(self.data):
            self._new_epoch()
        batch = self.data[self.pos: self.pos + self.batch_size]
        self.pos += self.batch_size
        return batch


@torch.no_grad()
def corpus_loss(model, blocks: torch.Tensor, batch_size: int = 32) -> float:
    """Mean next-token loss over ``blocks`` (token-weighted)."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        x = blocks[i: i + batch_size]
        logits = model(input_ids=x).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1), reduction="sum"
        )
        total += loss.item()
        count += x[:, 1:].numel()
    model.train()
    return total / max(1, count)


@torch.no_grad()
def response_losses(model, tokenizer, records: list[dict], max_length: int = 256, batch_size: int = 64) -> list[float]:
    """Mean response-token loss (EOS included) of each Alpaca record under the
    plain template -- exactly what SFT would compute for that record."""
    from qtbench.data.batches import IGNORE_INDEX, collate, tokenize_example
    from qtbench.data.template import format_prompt

    model.eval()
    out: list[float] = []
    examples = [tokenize_example(*format_prompt(r), tokenizer, max_length) for r in records]
    for i in range(0, len(examples), batch_size):
        batch = collate(examples[i: i + batch_size], tokenizer.pad_token_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
        labels = batch["labels"][:, 1:]
        nll = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), labels.clamp(min=0), reduction="none"
        )
        mask = (labels != IGNORE_INDEX).float()
        out += ((nll * mask).sum(1) / mask.sum(1).clamp(min=1)).tolist()
    model.train()
    return out


def sft_loss_report(model, tokenizer, world_dir: Path) -> dict:
    """Mean base-model response loss of the world's SFT records by family
    (clean, non-duplicate records) and by planted noise type.

    The acceptance check of the world: ``fact_covered`` must be far below
    ``fact_uncovered`` (the base model knows what the corpus told it)."""
    records = _read_jsonl(world_dir / "sft.jsonl")
    meta = _read_jsonl(world_dir / "sft_meta.jsonl")
    if not records or len(records) != len(meta):
        return {}
    losses = response_losses(model, tokenizer, records)
    groups: dict[str, list[float]] = {}
    for loss, m in zip(losses, meta):
        if m["noise"] is None and m["duplicate_of"] is None:
            groups.setdefault(f"clean/{m['family']}", []).append(loss)
        if m["noise"] is not None:
            groups.setdefault(f"noise/{m['noise']}", []).append(loss)
        if m["duplicate_of"] is not None:
            groups.setdefault("duplicate", []).append(loss)
    return {k: round(sum(v) / len(v), 4) for k, v in sorted(groups.items())} | {
        "n": {k: len(v) for k, v in sorted(groups.items())}
    }


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------


def pretrain_base_model(world_dir: Path, cfg: dict, out_dir: Path, seed: int) -> dict:
    """Train tokenizer + tiny Llama on ``world_dir/corpus.txt``; save both to
    ``out_dir`` (safetensors) with ``pretrain_summary.json``; return the summary.

    ``torch.set_num_threads`` is left to the caller (Snakemake's ``threads:``).
    """
    cfg = resolve_config(cfg)
    world_dir, out_dir = Path(world_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    random.seed(seed)
    torch.manual_seed(seed)

    lines = read_corpus(world_dir / "corpus.txt")
    tokenizer = train_tokenizer(lines + _sft_texts(world_dir), cfg["vocab_size"])
    docs = _encode_lines(lines, tokenizer)
    n_tokens = sum(len(d) for d in docs)

    torch.manual_seed(seed)
    model = build_model(cfg, tokenizer)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())

    eval_blocks = _blocks(docs, cfg["seq_len"])[:128]
    loss_before = corpus_loss(model, eval_blocks)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg["lr"], betas=(0.9, 0.95),
    )
    steps, warmup = cfg["steps"], min(cfg["warmup_steps"], cfg["steps"])

    def lr_at(step: int) -> float:  # linear warmup, cosine decay to 10%
        if step < warmup:
            return cfg["lr"] * (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return cfg["lr"] * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    stream = _EpochStream(docs, cfg["seq_len"], cfg["batch_size"], seed)
    train_start = time.time()
    deadline = train_start + 60.0 * cfg["max_minutes"]
    log: list[dict] = []
    done, running = 0, None
    for step in range(steps):
        if time.time() > deadline:
            break
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        x = stream.next()
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if done % 50 == 0 or done == steps:
            log.append({"step": done, "loss": round(running, 4), "lr": lr_at(step),
                        "epoch": stream.epoch, "seconds": round(time.time() - train_start, 1)})
            print(f"[pretrain] step {done}/{steps} loss {running:.4f} epoch {stream.epoch} "
                  f"{time.time() - train_start:.0f}s", flush=True)
    train_seconds = time.time() - train_start
    model.eval()
    loss_after = corpus_loss(model, eval_blocks)

    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    sft_losses = sft_loss_report(model, tokenizer, world_dir)

    summary = {
        "seed": seed,
        "config": cfg,
        "n_params": n_params,
        "vocab_size": len(tokenizer),
        "corpus_documents": len(lines),
        "corpus_tokens": n_tokens,
        "steps": done,
        "stopped_early": done < steps,
        "epochs": round(done * cfg["batch_size"] * cfg["seq_len"] / max(1, n_tokens), 2),
        "corpus_loss_before": round(loss_before, 4),
        "corpus_loss_after": round(loss_after, 4),
        "train_seconds": round(train_seconds, 1),
        "wall_seconds": round(time.time() - start, 1),
        "torch_threads": torch.get_num_threads(),
        "sft_response_loss": sft_losses,
        "log": log,
    }
    (out_dir / "pretrain_summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "log"}, indent=2, sort_keys=True), flush=True)
    return summary


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - thin CLI for hand use
    import argparse

    ap = argparse.ArgumentParser(description="Pretrain the world's tiny base model.")
    ap.add_argument("world_dir", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--config", type=Path, help="JSON file with pretrain config keys")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = json.loads(args.config.read_text()) if args.config else {}
    pretrain_base_model(args.world_dir, cfg, args.out_dir, args.seed)


if __name__ == "__main__":  # pragma: no cover
    main()
