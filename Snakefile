# qtbench: Q-Tuning beside sample-, token- and full-data baselines.
#   snakemake --cores all                                   # the embedded default (CPU, minutes)
#   snakemake --cores all --configfile config/paper.yaml    # the paper's grid on a GPU box
# The rules live in workflow/rules/; the work is done by the `qtbench` package.
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")


configfile: f"{workflow.basedir}/config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


# A method's own steps (e.g. LESS's warm-up): one rule file per method, found by name.
for _method_rules in sorted((Path(workflow.basedir) / "workflow/rules/methods").glob("*.smk")):

    include: _method_rules


# Seconds of CPU: run where Snakemake runs, never queued on a cluster (aggregate
# also reaches W&B from there: compute nodes often have no network).
localrules:
    all,
    world,
    aggregate,


rule all:
    default_target: True
    input:
        aggregate_outputs(),  # every table and plot (report.smk)
