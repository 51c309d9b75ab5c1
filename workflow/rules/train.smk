# One training job per run: model x method x (r_s, r_t) x seed.


def train_inputs(wildcards):
    run = run_of(wildcards)
    resolved = resolve_method(run.method, config["variants"])
    spec = resolved.spec
    inputs = {"base": base_model_input(run.model), "data": sft_data_input()}
    if spec.sample != "none" and SAMPLE_PRUNERS[spec.sample].static:
        # named as written: a variant of a static pruner scores with its own options
        inputs["static"] = f"{R}/static/{run.model}/{resolved.parts['sample']}.json"
    if needs_reference(run) and not config["models"][run.model]["reference"]:
        inputs["reference"] = f"{R}/models/{run.model}/reference"
    if uses_ground_truth(run.method, config["variants"]):
        # a control (oracle, anti_oracle): the world's labels; the config refuses it on other data
        inputs["meta"] = f"{R}/world/sft_meta.jsonl"
    return inputs


def needs_reference(run):
    """Read from the classes and the run's options (e.g. q_tuning's token_scorer: rho1)."""
    return "ref_nll" in required_stats(run.method, config["method_options"], config["variants"])


def train_extra_args(wildcards, input):
    args = []
    if "static" in input.keys():
        args += ["--static-scores", input.static]
    run = run_of(wildcards)
    if needs_reference(run):
        reference = config["models"][run.model]["reference"] or f"{R}/models/{run.model}/reference"
        args += ["--reference-model", reference]
    if "meta" in input.keys():
        args += ["--meta", input.meta]
    return " ".join(shlex.quote(a) for a in args)


rule train:
    input:
        unpack(train_inputs),
    output:
        directory(f"{R}/runs/{{model}}/{{method}}/{{budget}}/seed{{seed}}/checkpoint"),
    params:
        run_config=lambda wc: as_arg(qconfig.train_config(config, run_of(wc))),
        base=lambda wc: base_model_path(wc.model),
        data=sft_data_path(),
        extra=train_extra_args,
        state=f"{R}/runs/{{model}}/{{method}}/{{budget}}/seed{{seed}}/state",
        wandb_dir=f"{R}/wandb",
        version=qtbench.__version__,
    threads: config["train"]["threads"]
    resources:
        gpu=lambda wc: job_gpus("train", wc.model),
    log:
        f"{R}/logs/train/{{model}}/{{method}}/{{budget}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/train/{{model}}/{{method}}/{{budget}}/seed{{seed}}.tsv"
    conda:
        "../../environment.yml"
    shell:
        "{ON_GPUS} {resources.gpu} --distributed -- {QTBENCH_CMD} train --run-config {params.run_config} --base-model {params.base} --data {params.data} "
        "{params.extra} --state-dir {params.state} --wandb-dir {params.wandb_dir} --out {output} > {log} 2>&1"
