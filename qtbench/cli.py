"""``qtbench <verb>``: the commands the Snakemake rules call.

Every rule calls one verb with explicit paths and JSON options, so each step
can also be run and tested by hand; the package never reads Snakemake globals.
JSON options are given inline (``--options '{"seed": 0}'``) or as ``@file.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from qtbench.io import read_json


def _json(value: str) -> Any:
    if value.startswith("@"):
        try:
            return read_json(value[1:])
        except (FileNotFoundError, ValueError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc.msg}): {value[:80]}") from None


def cmd_world(args: argparse.Namespace) -> None:
    from qtbench.world.generate import build_world

    summary = build_world(args.options, Path(args.out))
    print(json.dumps(summary, indent=2, sort_keys=True))


def cmd_pretrain(args: argparse.Namespace) -> None:
    import torch

    from qtbench.world.pretrain import pretrain_base_model

    torch.set_num_threads(args.threads)
    summary = pretrain_base_model(Path(args.world), args.options, Path(args.out), args.seed)
    print(json.dumps(summary, indent=2, sort_keys=True))


def with_settings(run_config: dict, settings: dict | None, threads: int | None) -> dict:
    """The run config with the settings that change no output merged back in
    (``--settings``: W&B, log and checkpoint intervals; ``--threads``): the
    rules keep them out of ``params`` (qtbench.config.split_run_config)."""
    from qtbench.config import deep_merge

    cfg = deep_merge(run_config, settings or {})
    if threads is not None:
        cfg["train"] = {**cfg.get("train", {}), "threads": threads}
    return cfg


def cmd_train(args: argparse.Namespace) -> None:
    from qtbench.train.loop import train

    try:
        summary = train(with_settings(args.run_config, args.settings, args.threads), args.out, args.base_model, args.data, static_scores=args.static_scores,
                        reference_model=args.reference_model, state_dir=args.state_dir, wandb_dir=args.wandb_dir,
                        progress=not args.no_progress, meta=args.meta, token_scores=args.token_scores)
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():  # under torchrun: leave the process group cleanly
            dist.destroy_process_group()
    if os.environ.get("RANK", "0") != "0":
        return
    keys = ("run_id", "optimizer_steps", "samples_trained", "loss_tokens", "effective_sample_fraction",
            "effective_token_fraction", "flops_relative", "wall_time_s", "mean_loss", "processes")
    print(json.dumps({k: summary[k] for k in keys}, indent=2))


def cmd_score_static(args: argparse.Namespace) -> None:
    from qtbench.methods.static import score_static

    score_static(args.method, args.model, args.data, args.options, args.out, model_entry=args.model_entry,
                 data_cfg=args.data_config, inputs=args.inputs)


def cmd_score_tokens(args: argparse.Namespace) -> None:
    from qtbench.methods.static import score_tokens

    score_tokens(args.base_model, args.reference_model, args.data, args.out, model_entry=args.model_entry,
                 data_cfg=args.data_config, max_length=args.max_length, batch_size=args.batch_size)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from qtbench import tracking
    from qtbench.evaluate import evaluate, offline_environment

    if Path(args.model_path).exists():
        offline_environment()
    if args.threads is not None:
        args.eval_config = {**args.eval_config, "threads": args.threads}
    record = evaluate(args.model_path, args.eval_config, args.out, tasks_dir=args.tasks_dir,
                      model_entry=args.model_entry, meta=args.meta)
    if args.wandb is not None and record:
        meta = args.meta or {}
        tracker = tracking.start_run(args.wandb, name=f"{meta.get('run_id', args.model_path)}/eval",
                                     group=args.experiment, job_type="eval", config={"meta": meta, "eval": args.eval_config},
                                     tags=[str(meta.get(k)) for k in ("method", "budget", "model") if meta.get(k)],
                                     directory=args.wandb_dir)
        tracker.summary({f"eval/{task}/{metric}": s["value"] for task, ms in record["scores"].items() for metric, s in ms.items()})
        tracker.finish()
    for task, metrics in record.get("scores", {}).items():
        print(task, {k: round(v["value"], 4) for k, v in metrics.items()})


def cmd_aggregate(args: argparse.Namespace) -> None:
    from qtbench import tracking
    from qtbench.report.aggregate import aggregate, log_results
    from qtbench.report.plots import plot_files

    tables = aggregate(args.evals, args.tasks, args.out, run_dirs=args.runs, world_meta=args.world_meta,
                       plots_dir=args.plots, eu_epoch=args.eu_epoch, variants=args.variants,
                       method_options=args.method_options, n_resamples=args.bootstrap_resamples,
                       bootstrap_seed=args.bootstrap_seed)
    print((Path(args.out) / "main.md").read_text())
    if args.wandb is not None:
        tracker = tracking.start_run(args.wandb, name=f"{args.experiment}/summary", group=args.experiment,
                                     job_type="aggregate", config={"tasks": args.tasks}, tags=["summary"],
                                     directory=args.wandb_dir)
        plots = [Path(args.plots) / name for name in plot_files()] if args.plots else []
        log_results(tracker, tables, plots)
        tracking.log_experiment_artifacts(tracker, args.experiment, args.out, args.plots, args.runs,
                                          checkpoints=bool(args.wandb.get("log_checkpoints")))
        tracker.finish()


def cmd_compare(args: argparse.Namespace) -> None:
    from qtbench.io import write_text_atomic
    from qtbench.report.compare import compare

    result = compare(args.results_dir, args.experiment, args.selectors, tasks=args.tasks,
                     n_resamples=args.n_resamples, seed=args.seed, confidence=args.confidence,
                     pair_seeds=args.pair_seeds)
    print(result.to_markdown(), end="")
    if args.csv:
        write_text_atomic(args.csv, result.tidy().to_csv(index=False))


def cmd_eu_plane(args: argparse.Namespace) -> None:
    from qtbench.eu_plane import crosstab, label_auroc, run

    frame = run(args.checkpoint, args.data, args.out, r_s=args.r_s, options=args.options, micro_batch=args.micro_batch,
                max_length=args.max_length, meta=args.meta, seed=args.seed)
    counts = frame["batch_quadrant"].value_counts().to_dict()
    print(f"{len(frame)} records scored -> {args.out}; per-batch quadrants: {counts}")
    if "truth" in frame:
        print("\nGround truth x quadrant (per micro-batch triage, % of each row):")
        print(crosstab(frame, "batch_quadrant").to_string())
        print("\nGround truth x quadrant (one triage over the whole data set, % of each row):")
        print(crosstab(frame, "quadrant").to_string())
        over = frame.attrs.get("entropy_over", "response")
        print(f"\nAUROC vs clean records (per-sample PPL, mean entropy over {over} positions; "
              "0.5 = no separation, < 0.5 = the label scores lower):")
        print(label_auroc(frame).round(3).to_string())


def cmd_validate_config(args: argparse.Namespace) -> None:
    """The config as ``snakemake --configfile FILE ...`` sees it (merged over
    config/config.yaml, models replaced: qtbench.config.merge_over_default),
    the DAG-build checks of the Snakefile (qtbench.preflight), and the runs."""
    from qtbench.config import expand_runs, merge_over_default
    from qtbench.preflight import check_config

    config = merge_over_default(*args.config)
    check_config(config, skip_tasks=args.skip_tasks)
    runs = expand_runs(config)
    evals = len(runs) + (len(config["models"]) if config["eval"]["evaluate_base"] else 0)
    print(f"{' '.join(args.config)}: valid (merged over config/config.yaml); {len(runs)} training run(s), "
          f"{evals} evaluation(s)")
    for run in runs:
        print("  " + run.run_id)


def cmd_methods(args: argparse.Namespace) -> None:
    from qtbench.methods.registry import registered_names

    for kind, names in registered_names().items():
        print(f"{kind}: {', '.join(names) or '-'}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qtbench", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("world", help="build the synthetic world (data, corpus, lm-eval tasks)")
    p.add_argument("--options", type=_json, default={}, help="world options (JSON)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_world)

    p = sub.add_parser("pretrain", help="train the world's tokenizer and tiny base model")
    p.add_argument("--world", required=True)
    p.add_argument("--options", type=_json, default={})
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("train", help="fine-tune one run (model x method x budget x seed)")
    p.add_argument("--run-config", type=_json, required=True, help="qtbench.config.train_config(...) as JSON")
    p.add_argument("--base-model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--static-scores")
    p.add_argument("--reference-model")
    p.add_argument("--state-dir")
    p.add_argument("--settings", type=_json, help="settings that change no output (wandb, train.log_every, ...), merged over --run-config")
    p.add_argument("--threads", type=int, help="torch threads of a CPU job (train.threads)")
    p.add_argument("--wandb-dir")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--meta", help="the world's sft_meta.jsonl: ground-truth labels for a control (oracle, anti_oracle)")
    p.add_argument("--token-scores", help="the data set's per-token scores (score-tokens; TokenCleaning's global threshold)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("score-tokens", help="score every response token once with the base and reference models "
                                            "(TokenCleaning's global threshold)")
    p.add_argument("--base-model", required=True)
    p.add_argument("--reference-model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--model-entry", type=_json, default={}, help="the base model's config entry (JSON; its reference too)")
    p.add_argument("--data-config", type=_json, default={}, help="the config's data section (JSON)")
    p.add_argument("--max-length", type=int, required=True, help="train.max_length")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", required=True, help="a .npy file: the scores, sorted descending (float32)")
    p.set_defaults(func=cmd_score_tokens)

    p = sub.add_parser("score-static", help="score a data set once for a static sample pruner")
    p.add_argument("--method", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--options", type=_json, default={})
    p.add_argument("--model-entry", type=_json, default={})
    p.add_argument("--data-config", type=_json, default={}, help="the config's data section (JSON)")
    p.add_argument("--inputs", type=_json, default={},
                   help="what a method's own step gives its scoring (JSON; e.g. LESS's warm-up folder)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_score_static)

    p = sub.add_parser("evaluate", help="lm-eval a checkpoint on the configured tasks")
    p.add_argument("--model-path", required=True)
    p.add_argument("--eval-config", type=_json, required=True)
    p.add_argument("--tasks-dir")
    p.add_argument("--model-entry", type=_json, default={})
    p.add_argument("--meta", type=_json, default={})
    p.add_argument("--threads", type=int, help="torch threads of a CPU job (eval.threads)")
    p.add_argument("--wandb", type=_json)
    p.add_argument("--wandb-dir")
    p.add_argument("--experiment", default="qtbench")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("aggregate", help="collect evaluation records into tables")
    p.add_argument("--evals", nargs="+", required=True)
    p.add_argument("--tasks", type=_json, required=True, help="the config's eval.tasks (JSON)")
    p.add_argument("--out", required=True, help="tables folder")
    p.add_argument("--runs", nargs="*", default=[], help="checkpoint folders (train_summary.json, trace.jsonl)")
    p.add_argument("--world-meta", help="the world's sft_meta.jsonl (ground truth: noise recall, EU-plane markers)")
    p.add_argument("--plots", help="plots folder (PNG + PDF); no plots without it")
    p.add_argument("--eu-epoch", type=int, default=-1, help="the epoch the EU-plane plot shows (-1: the last)")
    p.add_argument("--variants", type=_json, default={},
                   help="the config's variants (JSON): rows of a variant sit under their base method with its options")
    p.add_argument("--method-options", type=_json, default={},
                   help="the config's method_options (JSON): the options a variant differs in, the InfoBatch form")
    p.add_argument("--bootstrap-resamples", type=int, default=2000,
                   help="bootstrap replicates of every interval (config report.bootstrap_resamples; default 2000)")
    p.add_argument("--bootstrap-seed", type=int, default=0,
                   help="random seed of the bootstrap (config report.bootstrap_seed; default 0)")
    p.add_argument("--wandb", type=_json)
    p.add_argument("--wandb-dir")
    p.add_argument("--experiment", default="qtbench")
    p.set_defaults(func=cmd_aggregate)

    p = sub.add_parser("compare", help="paired differences between finished run groups, with bootstrap intervals")
    p.add_argument("selectors", nargs="+", metavar="SELECTOR",
                   help="method[@s<r_s>-t<r_t>][:model], e.g. q_tuning@s0.25-t0.5 (seeds pooled); "
                        "the first is the reference")
    p.add_argument("--experiment", required=True, help="results/<experiment>")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--tasks", type=lambda text: [t for t in text.split(",") if t],
                   help="comma-separated tasks to show (default: the records' configured tasks)")
    p.add_argument("--n-resamples", type=int, default=2000, help="bootstrap replicates (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap random seed (default 0)")
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--pair-seeds", action="store_true",
                   help="draw the same seed indices for every group (seed k of each shares something)")
    p.add_argument("--csv", help="also write the tidy table here")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("eu-plane", help="place a data set on a model's Error-Uncertainty plane")
    p.add_argument("--checkpoint", required=True, help="model folder or Hugging Face id")
    p.add_argument("--data", required=True, help="SFT data file (any supported format)")
    p.add_argument("--meta", help="ground-truth metadata (the world's sft_meta.jsonl)")
    p.add_argument("--r-s", type=float, default=0.25, help="sample ratio of the triage (default 0.25)")
    p.add_argument("--options", type=_json, default={}, help="Q-Tuning options (JSON)")
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="CSV: index, ppl, entropy, quadrants (+ truth)")
    p.set_defaults(func=cmd_eu_plane)

    p = sub.add_parser("validate-config", help="validate config file(s) merged over the default, as Snakemake does, and list the runs")
    p.add_argument("config", nargs="+", help="one or more --configfile files, merged in order")
    p.add_argument("--skip-tasks", action="store_true", help="do not check eval task names against lm-eval's index")
    p.set_defaults(func=cmd_validate_config)

    p = sub.add_parser("methods", help="list registered methods")
    p.set_defaults(func=cmd_methods)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"qtbench {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
