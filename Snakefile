# The whole study: `snakemake --cores all` (add `--resources gpu=N` on a machine with N GPUs).
# Rules are built from the stage list in src/tdiag/plan.py, the same list dvc.yaml is
# generated from. Override a key with `snakemake --config key.path=value`.
include: "workflow/rules/common.smk"


rule all:
    input:
        plan.final_targets(CFG),


include: "workflow/rules/stages.smk"
