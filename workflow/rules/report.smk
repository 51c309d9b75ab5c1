# Tables from every evaluation record, and the W&B summary run.


rule aggregate:
    input:
        eval_paths(),
    output:
        [report(p, category="Tables", caption="../report/tables.rst") if p.endswith(".md") else p for p in table_paths()],
    params:
        tasks=as_arg(config["eval"]["tasks"]),
        out=f"{R}/tables",
        wandb=as_arg(config["wandb"]),
        wandb_dir=f"{R}/wandb",
        version=qtbench.__version__,
    log:
        f"{R}/logs/aggregate.log",
    conda:
        "../../environment.yml"
    shell:
        "{QTBENCH} aggregate --evals {input} --tasks {params.tasks} --out {params.out} "
        "--wandb {params.wandb} --wandb-dir {params.wandb_dir} --experiment {EXP} > {log} 2>&1"
