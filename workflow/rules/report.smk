# Tables, plots, noise recall and the W&B summary run of an experiment.
# `snakemake --report report.html` collects every output marked with report() below
# (HTML tables and PNG plots, each with its caption from workflow/report/).
# Helper functions: common.smk.


# Lint "shell command directly uses variable QTBENCH, WANDB from outside of the rule":
# on purpose. The command prefix (this checkout and its Python) changes no output, and a
# new environment must not rerun finished jobs. W&B settings, threads and log/checkpoint
# intervals change no output. As `params` they would be a rerun trigger
# (qtbench.config.split_run_config).
rule aggregate:
    input:
        evals=eval_paths(),
        per_item=[path.removesuffix(".json") + ".items.jsonl" for path in eval_paths()],  # per-item outcomes: intervals
        runs=run_dirs(),
        meta=world_meta_input(),
    output:
        tables=report_table_paths(),
        plots=report_plot_paths(),
    params:
        tasks=as_arg(config["eval"]["tasks"]),
        out=lambda wc, output: str(Path(output.tables[0]).parent),
        plots=lambda wc, output: str(Path(output.plots[0]).parent),
        meta=lambda wc, input: f"--world-meta {shlex.quote(input.meta[0])}" if input.meta else "",
        eu_epoch=EU_EPOCH,
        variants=as_arg(config.get("variants") or {}),
        method_options=as_arg(config.get("method_options") or {}),
        resamples=config["report"]["bootstrap_resamples"],
        bootstrap_seed=config["report"]["bootstrap_seed"],
        wandb_dir=f"{R}/wandb",
        experiment=EXP,
        version=qtbench.__version__,
    resources:
        mem_mb=job_mem_mb("aggregate"),
        runtime=job_runtime("aggregate"),
    log:
        f"{R}/logs/aggregate.log",
    benchmark:
        f"{R}/benchmarks/aggregate.tsv"
    conda:
        "../../environment.yml"
    shell:
        "{QTBENCH} aggregate --evals {input.evals} --runs {input.runs} {params.meta} --tasks {params.tasks} "
        "--out {params.out} --plots {params.plots} --eu-epoch {params.eu_epoch} --variants {params.variants} "
        "--method-options {params.method_options} --bootstrap-resamples {params.resamples} "
        "--bootstrap-seed {params.bootstrap_seed} "
        "--wandb {WANDB} --wandb-dir {params.wandb_dir} --experiment {params.experiment} > {log} 2>&1"
