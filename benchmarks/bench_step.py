"""What one training step costs, per method, against a plain PyTorch loop.

Usage::

    python benchmarks/bench_step.py                 # ~1.5 minutes on 2 CPU cores
    python benchmarks/bench_step.py --quick         # a rough look in ~20 seconds
    python benchmarks/bench_step.py --out bench.json

One fixed tiny Llama-style model (random weights) and one fixed synthetic data
set (prompt + response token ids of varied lengths) are timed, all in one
process, for:

* ``plain``: forward with labels, backward, AdamW - the reference loop;
* qtbench's trainer step (``qtbench.train.step.train_window`` + optimizer step) for
  ``full``, ``q_tuning`` and two baseline pairs at r_s = 0.25 and 0.5;
* ``hf_trainer``: ``transformers.Trainer`` on the same batches (full data).

Every configuration runs ``--repeats`` times over the same batches in an
interleaved order; the median time per step is reported with its spread
(min-max over repeats).  The floor of a pruned step is one no-grad forward over
the whole batch (about 1 unit per sample) plus forward + backward over the kept
samples (about 3 units each): ``(1 + 3 r_s) / 3`` of a full step.  The stats
pass's peak extra memory with a 50k vocabulary is measured in subprocesses
(max RSS), chunked against unchunked.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import resource
import statistics
import tempfile
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from qtbench.data.batches import IGNORE_INDEX, TokenizedExample, collate  # noqa: E402
from qtbench.methods.base import Budget, build_method  # noqa: E402
from qtbench.train.loop import epoch_order, make_optimizer  # noqa: E402
from qtbench.train.step import Counters, StepContext, train_window  # noqa: E402




def make_model(vocab: int, hidden: int, layers: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(config)
    model.config.use_cache = False
    return model


def make_examples(n: int, vocab: int, seed: int = 0) -> list[TokenizedExample]:
    """Prompts of 16-48 tokens, responses of 16-112 tokens (a world-like spread)."""
    g = torch.Generator().manual_seed(seed)
    examples = []
    for _ in range(n):
        p = int(torch.randint(16, 49, (1,), generator=g))
        r = int(torch.randint(16, 113, (1,), generator=g))
        ids = torch.randint(3, vocab, (p + r,), generator=g).tolist()
        examples.append(TokenizedExample(ids, [IGNORE_INDEX] * p + ids[p:], False))
    return examples


def plain_step(model, optimizer, batch):
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    out.loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def time_configs(configs, batch_orders, examples, args):
    """Seconds per step of each config (one value per repeat; configs run
    interleaved per repeat) and the share of the trained grid that was padding."""
    times = {name: [] for name in configs}
    padding = {}
    for repeat in range(args.repeats):
        for name, (kind, method_name, budget, order) in configs.items():
            batches = batch_orders[order]
            model = make_model(args.vocab, args.hidden, args.layers)
            optimizer = make_optimizer(model, 1e-4, 0.0)  # the same fused AdamW for every config
            counters, sink = Counters(), io.StringIO()
            method = build_method(method_name, budget, {"random": {"mode": "batch"}}) if kind == "qtbench" else None
            start = None
            for step, batch_ids in enumerate(batches):
                if step == args.warmup:
                    start = time.perf_counter()
                if kind == "plain":
                    plain_step(model, optimizer, collate([examples[i] for i in batch_ids], 0))
                else:
                    ctx = StepContext(model, method, examples, 0, torch.device("cpu"), counters, stats_chunk=128,
                                      trace=sink)
                    train_window(ctx, [batch_ids], 0, {})
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
            times[name].append((time.perf_counter() - start) / (len(batches) - args.warmup))
            if kind == "plain":
                grid = sum(len(b) * max(len(examples[i].input_ids) for i in b) for b in batches)
                padding[name] = 1 - sum(len(examples[i].input_ids) for b in batches for i in b) / grid
            else:
                padding[name] = 1 - counters.input_tokens_trained / max(1, counters.input_positions_trained)
    return times, padding


def time_hf_trainer(batches, examples, args):
    """transformers.Trainer over the same micro-batches (full data)."""
    from torch.utils.data import Dataset
    from transformers import Trainer, TrainingArguments

    order = [i for b in batches for i in b]

    class Fixed(Dataset):
        def __len__(self):
            return len(order)

        def __getitem__(self, i):
            e = examples[order[i]]
            return {"input_ids": e.input_ids, "labels": e.labels}

    def collator(features):
        return collate([TokenizedExample(f["input_ids"], f["labels"], False) for f in features], 0)

    result = []
    for _ in range(args.repeats):
        model = make_model(args.vocab, args.hidden, args.layers)
        targs = TrainingArguments(output_dir=str(Path(tempfile.gettempdir()) / "qtbench-bench-hf"), per_device_train_batch_size=args.batch,
                                  max_steps=len(batches), learning_rate=1e-4, lr_scheduler_type="constant",
                                  report_to="none", save_strategy="no", logging_strategy="no", use_cpu=True,
                                  dataloader_num_workers=0, disable_tqdm=True, seed=0, optim="adamw_torch_fused")
        trainer = Trainer(model=model, args=targs, train_dataset=Fixed(), data_collator=collator)
        trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(range(len(order)))
        start = time.perf_counter()
        trainer.train()
        result.append((time.perf_counter() - start) / len(batches))
    return result


def peak_memory(args) -> dict:
    """Max RSS of a stats pass over [8, 512] with a 50k vocabulary: chunked vs unchunked."""
    out = {}
    for chunk in (128, 100000):
        code = (
            "import resource, sys, torch; sys.path.insert(0, %r)\n"
            "from benchmarks.bench_step import make_model\n"
            "from qtbench.methods.stats import token_nll_entropy\n"
            "m = make_model(50000, 64, 1).eval(); ids = torch.randint(3, 50000, (8, 512)); mask = torch.ones_like(ids)\n"
            "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "token_nll_entropy(m, ids, mask, chunk_size=%d)\n"
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)\n"
        ) % (str(REPO), chunk)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        out[f"chunk_{chunk if chunk < 100000 else 'none'}_extra_mb"] = float(done.stdout.strip().splitlines()[-1])
    out["full_logits_mb"] = 8 * 512 * 50000 * 4 / 2**20
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=1536)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--out", default="benchmarks/results.json")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.repeats = 12, 1
    torch.set_num_threads(args.threads)
    examples = make_examples(args.steps * args.batch, args.vocab)
    indices = list(range(len(examples)))
    orders = {
        "random": epoch_order(indices, seed=0, epoch=0, micro_batch=args.batch)[: args.steps],
        # train.bucket_by_length: the same records, batched with others of similar length
        "bucketed": epoch_order(indices, seed=0, epoch=0, micro_batch=args.batch,
                                lengths=[len(e.input_ids) for e in examples])[: args.steps],
    }
    batches = orders["random"]

    configs = {"plain": ("plain", None, None, "random"), "full": ("qtbench", "full", Budget(1.0, 1.0), "random"),
               "full, bucketed": ("qtbench", "full", Budget(1.0, 1.0), "bucketed")}
    for r_s in (0.25, 0.5):
        for method in ("q_tuning", "ppl_sample+ppl", "random+random"):
            configs[f"{method}@{r_s}"] = ("qtbench", method, Budget(r_s, 0.5), "random")
    times, padding = time_configs(configs, orders, examples, args)
    times["hf_trainer"] = time_hf_trainer(batches, examples, args)

    tokens_per_step = statistics.mean(sum(len(examples[i].input_ids) for i in b) for b in batches)
    full = statistics.median(times["full"])
    rows = []
    for name, values in times.items():
        median = statistics.median(values)
        row = {"config": name, "step_ms": 1000 * median, "min_ms": 1000 * min(values), "max_ms": 1000 * max(values),
               "steps_per_s": 1 / median, "tokens_per_s": tokens_per_step / median, "vs_full": median / full,
               "padding": padding.get(name)}
        if "@" in name:
            r_s = float(name.split("@")[1])
            row["floor"] = (1 + 3 * r_s) / 3
            row["vs_floor"] = row["vs_full"] / row["floor"]
        rows.append(row)
    plain = next(r for r in rows if r["config"] == "plain")
    result = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip() + f", torch threads {args.threads}",
        "torch": torch.__version__, "settings": vars(args), "tokens_per_step": tokens_per_step,
        "full_vs_plain_tokens_per_s": next(r for r in rows if r["config"] == "full")["tokens_per_s"] / plain["tokens_per_s"],
        "rows": rows,
    }
    if not args.no_memory:
        result["stats_pass_memory"] = peak_memory(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")

    print(f"{'config':<22}{'step ms':>9}{'min-max':>15}{'tok/s':>9}{'vs full':>9}{'floor':>7}{'vs floor':>9}{'padding':>9}")
    for r in rows:
        spread = f"{r['min_ms']:.1f}-{r['max_ms']:.1f}"
        floor = f"{r['floor']:.3f}" if "floor" in r else ""
        vs_floor = f"{r['vs_floor']:.2f}" if "vs_floor" in r else ""
        pad = f"{100 * r['padding']:.1f}%" if r.get("padding") is not None else ""
        print(f"{r['config']:<22}{r['step_ms']:>9.1f}{spread:>15}{r['tokens_per_s']:>9.0f}{r['vs_full']:>9.3f}{floor:>7}"
              f"{vs_floor:>9}{pad:>9}")
    print(f"full / plain tokens/s: {result['full_vs_plain_tokens_per_s']:.3f}")
    if "stats_pass_memory" in result:
        print("stats pass extra memory (MB):", json.dumps(result["stats_pass_memory"]))


if __name__ == "__main__":
    main()
