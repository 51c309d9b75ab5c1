# Tables, plots, noise recall and the W&B summary run of an experiment.
# `snakemake --report report.html` collects every output marked with report() below
# (HTML tables and PNG plots, each with its caption from workflow/report/).
from qtbench.plots import PLOT_FORMATS, PLOT_NAMES
from qtbench.tables import TABLE_FORMATS, TABLE_STEMS

#: The epoch whose samples the EU-plane plot shows (0 = the first pass; -1 = the last epoch).
EU_EPOCH = -1

#: Tables shown in the report (their .html), in this order; the others are files only.
REPORT_TABLES = ("main", "budget", "noise_recall", "noise_quadrants", "comparison", "paper_reference")


def run_dirs():
    """The checkpoint folder of every run: train_summary.json, trace.jsonl, samples.jsonl."""
    return [f"{R}/runs/{run.model}/{run.method}/{run.budget}/seed{run.seed}/checkpoint" for run in RUNS]


def world_meta_input():
    """The world's ground truth (noise and duplicate labels), when the SFT data is the world's."""
    return [f"{R}/world/sft_meta.jsonl"] if config["data"]["source"] == "world" else []


def report_table_paths():
    paths = []
    for stem in TABLE_STEMS:
        for ext in TABLE_FORMATS:
            path = f"{R}/tables/{stem}.{ext}"
            if ext == "html" and stem in REPORT_TABLES:
                path = report(path, caption=f"../report/table_{stem}.rst", category="Tables",
                              labels={"table": stem.replace("_", " ")})
            paths.append(path)
    return paths


def report_plot_paths():
    paths = []
    for name in PLOT_NAMES:
        for ext in PLOT_FORMATS:
            path = f"{R}/plots/{name}.{ext}"
            if ext == "png":
                path = report(path, caption=f"../report/plot_{name}.rst", category="Plots",
                              labels={"plot": name.replace("_", " ")})
            paths.append(path)
    return paths


def aggregate_outputs():
    """Every file the aggregate rule writes (rule all can request exactly these)."""
    return [f"{R}/tables/{stem}.{ext}" for stem in TABLE_STEMS for ext in TABLE_FORMATS] + [
        f"{R}/plots/{name}.{ext}" for name in PLOT_NAMES for ext in PLOT_FORMATS
    ]


rule aggregate:
    input:
        evals=eval_paths(),
        runs=run_dirs(),
        meta=world_meta_input(),
    output:
        report_table_paths() + report_plot_paths(),
    params:
        tasks=as_arg(config["eval"]["tasks"]),
        out=f"{R}/tables",
        plots=f"{R}/plots",
        meta=lambda wc, input: f"--world-meta {shlex.quote(input.meta[0])}" if input.meta else "",
        eu_epoch=EU_EPOCH,
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
        "--out {params.out} --plots {params.plots} --eu-epoch {params.eu_epoch} "
        "--wandb {WANDB} --wandb-dir {R}/wandb --experiment {EXP} > {log} 2>&1"
