"""What each stage asks a scheduler for: CPUs, memory, wall time and GPUs.

Snakemake hands these to every rule (workflow/rules/stages.smk); the local scheduler
counts `gpu` and the threads, and a cluster executor turns all of them into its
submission arguments (the SLURM plugin: `--cpus-per-task`, `--mem`, `-t`, `--gpus`).
They follow the resolved scale: `smoke` is sized for one CPU core, `full` for one GPU
(params.yaml). A training stage also takes one GPU per process of its run at every scale
(`Stage.gpus`, the run's `train.devices`): it trains on GPUs wherever they are given, and
the local `gpu` resource counts them; its CPUs and host memory grow with its processes.
Every figure is a rule of thumb with its measurement beside it, chosen to be an upper
bound: a job that outgrows its wall time is killed by the scheduler, and a
training job then resumes from its checkpoint on the retry, which gets twice the time
(the rule's `runtime` grows with Snakemake's `attempt`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tdiag.config import DatasetConfig, LanguageModelTaskConfig, RunConfig


@dataclass(frozen=True)
class Resources:
    cpus: int
    """CPU cores; a training job runs torch with this many threads."""
    mem_mb: int
    """Host memory in MB (not GPU memory: a GPU is the job's whole)."""
    runtime_min: int
    """Wall time in minutes, for the first attempt."""


TRAIN_THREADS = 1
"""CPU threads per training job. The study's models are small enough that a step is
dominated by per-op overhead, not arithmetic: one thread per job and one job per core is
measured faster than two threads per job (benchmarks/RESULTS.md, "Copy task" and "LM
throughput"). On a GPU the one thread launches the kernels."""

MIN_RUNTIME = 10
"""No job asks for less: start-up (interpreter, torch import, CUDA context) takes tens of
seconds on a busy node, and schedulers round small limits up anyway."""

STEP_SECONDS = {"smoke": 0.5, "full": 0.1}
"""Wall-time budget of one optimizer step, evaluations spread over it. smoke, one CPU
thread: the slowest smoke run, wmt14 (256 wide), measured 6.5 min for 1,500 bf16 steps
with its evaluations (0.26 s a step) on a CPU with AVX512-BF16; in fp32 on an AMD EPYC
without AVX-512, beside other jobs, 1-2.5 s a step (its 600 steps can outgrow the budget
there: the retry doubles it); toy steps take 0.02 s. full, one GPU: the H200
estimate measured 5-20 ms a step (lm, toy, wmt14; benchmarks/RESULTS.md, `tdiag
estimate`), 14-17 ms for toy with evaluations; 0.1 s leaves 5x for an older GPU, a
shared node and the final evaluation."""

DECODE_SECONDS = {"greedy": 0.002, "beam": 0.02}
"""Wall-time budget of one evaluation, per held-out sequence (and per beam for beam
search). Greedy decoding is batched: the toy study's 41 evaluations of 500 sequences
left its H200 seeds at 14-17 ms a step overall, about 0.1-0.2 s an evaluation, so
0.002 s a sequence (1 s an evaluation) leaves 5-10x. Beam search decodes one sentence at
a time, over two followed splits (translation evaluates its training split too): 10 ms
each per beam."""

WIKITEXT2_TRAIN_TOKENS = 2_088_628
"""Tokens of WikiText-2's training split (Merity et al. 2016, Table 1), for a
language-model run that trains on every token (`train_tokens: null`). A larger corpus of
your own needs more: `--set-resources train_lm_<run>:runtime=<minutes>`."""

TRAIN_MEM_MB = {"smoke": 2000, "full": 8000}
"""smoke: peak RSS measured 373 MiB (toy) to 662 MiB (the 200-wide LM, its 38 MB logits
kept by `retain_freed_host_memory`) on the CPU; 2 GB is 3x that. full: torch's CUDA
libraries and context take 2-3 GB of host memory before any data; the full datasets
(WikiText-2 as int64 tensors, 50,000 synthetic pairs) add tens of MB."""

DATA = {"smoke": Resources(cpus=1, mem_mb=2000, runtime_min=MIN_RUNTIME),
        "full": Resources(cpus=1, mem_mb=2000, runtime_min=30)}
"""Data stages (fetch, synth, prepare, BPE): one process each. At full scale from the
mirror each took under 4 s and at most 250 MB of RSS here (`data prepare wikitext2`),
and all of them 119 s together on the H200 machine (benchmarks/RESULTS.md); a download
from the network instead of the mirror is what the 30 minutes are for."""

CHECK = Resources(cpus=1, mem_mb=2000, runtime_min=MIN_RUNTIME)
"""`tdiag check` of one run's model on the CPU, at any scale (the checks take a few rows of
a batch): 15-25 s for the smoke toy and GPT models, 150-190 s for the lm study's LSTMs
(their overfit check), measured beside other jobs on 2 cores (load 6)."""

REPORT = Resources(cpus=1, mem_mb=2000, runtime_min=MIN_RUNTIME)
"""collect and report: reading summaries and curves, executing a plotting notebook
(a Jupyter kernel with pandas and matplotlib: a few hundred MB, a minute)."""


def training(scale: str, rc: RunConfig, dataset: DatasetConfig) -> Resources:
    """A training stage: wall time for every seed's steps and evaluations at the scale's budget."""
    steps = _steps_per_seed(rc, dataset)
    if rc.train.eval_every:  # a run in epochs also evaluates at each epoch's end (train/loop.py)
        evaluations = steps // rc.train.eval_every + (rc.train.epochs or 0) + 1
    else:
        evaluations = (rc.train.epochs or 1) + 1
    per_sequence = DECODE_SECONDS["greedy"] if rc.train.beam_size == 1 else rc.train.beam_size * DECODE_SECONDS["beam"]
    evaluation = rc.train.eval_examples * per_sequence
    seconds = rc.seeds * (steps * STEP_SECONDS[scale] + evaluations * evaluation)
    return Resources(  # the wall time of one process: data parallelism is not counted on to save any
        cpus=TRAIN_THREADS * rc.train.devices,
        mem_mb=TRAIN_MEM_MB[scale] * rc.train.devices,
        runtime_min=max(MIN_RUNTIME, math.ceil(seconds / 60)),
    )


def _steps_per_seed(rc: RunConfig, dataset: DatasetConfig) -> int:
    if rc.train.max_steps:
        return rc.train.max_steps
    # An epoch's length is the prepared data's; before the data stages run, it is bounded
    # from the configured token cut: contiguous streams of `batch_size` x `bptt` tokens a
    # step (train/language_model_workload.py). Only language models train by epochs.
    assert isinstance(dataset, LanguageModelTaskConfig), "only language models train by epochs"
    tokens = dataset.train_tokens or WIKITEXT2_TRAIN_TOKENS
    return rc.train.epochs * math.ceil(tokens / (rc.train.batch_size * rc.train.bptt))

