# One rule per stage record; a gpu stage takes one unit of the `gpu` resource and
# claims its own device at run time (tdiag.devices).
for stage in STAGES:

    rule:
        name:
            stage.name
        input:
            list(stage.deps),
        output:
            list(stage.outs),
        params:
            fingerprint=stage.fingerprint,
            cmd=shlex.join(TDIAG + list(stage.args)),
        threads: TRAIN_THREADS if stage.gpu else 1
        priority: stage.priority
        resources:
            gpu=int(stage.gpu),
        shell:
            "{params.cmd}" + (" --threads {threads}" if stage.gpu else "")
