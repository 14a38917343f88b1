"""The configuration schema: every section of params.yaml as a frozen pydantic model.

Unknown keys are refused (`extra="forbid"`), and checks across keys of a section live
on that section's model, so a bad combination fails when the file is loaded.
`Config.run` is a lookup: `loading.validate` resolves every run once per load.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Optional, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from tdiag import paths
from tdiag.config import factory as factories
from tdiag.config.errors import ConfigError
from tdiag.config.overrides import deep_merge
from tdiag.digest import json_digest


class Frozen(BaseModel):
    # allow_inf_nan=False: `.inf` and `.nan` are refused by every float field, not only
    # where a bound happens to exclude them (`lr: .inf` passes `gt=0`).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# Upper bounds on sizes and counts: generous (far beyond anything this project trains),
# but finite, so a slip such as `d_model: 10**12` is a one-line error when the file is
# loaded instead of an allocator traceback in the middle of a run.
MAX_EXAMPLES = 10**8
"""n_train, n_valid, n_test, eval_examples: 100 million sequences."""
MAX_TOKENS = 10**10
"""Language-model token cuts (train_tokens, eval_tokens): 10 billion tokens."""
MAX_VOCAB = 2**20
"""vocab_size (synthetic symbols) and bpe_merges: a million, 20x a typical BPE vocabulary."""
MAX_LENGTH = 2**20
"""Sequence lengths (content_length, run_length, max_tokens, max_len, bptt): a million positions."""
MAX_WIDTH = 65536
"""d_model, hidden_size: over 5x GPT-3's 12,288."""
MAX_FF = 4 * MAX_WIDTH
"""d_ff: the usual 4 x d_model at the widest d_model."""
MAX_HEADS = 1024
MAX_LAYERS = 256
"""Each of n_layers, n_encoder_layers, n_decoder_layers: over twice GPT-3's 96."""
MAX_BATCH = 2**20
"""batch_size (sequences or streams) and micro_batches."""
MAX_BATCH_TOKENS = 2**30
"""batch_tokens: a billion target tokens per step."""
MAX_STEPS = 10**9
"""max_steps, warmup_steps, eval_every, checkpoint_every."""
MAX_EPOCHS = 10**6
MAX_BEAM = 1024
MAX_SEEDS = 1000
"""seeds: trained runs per variant."""
MAX_DEVICES = 1024
"""train.devices: processes of one data-parallel run."""
MAX_SEED = 2**32 - MAX_SEEDS - 1
"""Seeds seed numpy's generators (0 .. 2**32 - 1); train.seed + seeds - 1 must stay in range."""


# -------------------------------------------------------------------------- names
# Dataset, study, run and grid names become folder names and stage command arguments
# (paths.py), so they are held to paths.NAME_PATTERN when the file loads.


def _name(value: str) -> str:
    if not paths.NAME_PATTERN.fullmatch(value):
        raise ValueError(paths.NAME_RULE)
    return value


Name = Annotated[str, AfterValidator(_name)]
"""A name given as a value (a run's `dataset`, a grid's `datasets` entries)."""


def _named(mapping: Any, section: str = "") -> Any:
    """The keys of a mapping of names, checked before its values are validated, so the
    error (reported against the mapping's path) names the key as written.

    With `section` (datasets, studies), a name may not hold '.' either: dvc.yaml tracks
    `<section>.<name>` as a params key, and DVC reads every '.' there as a level.
    """
    if isinstance(mapping, dict):
        for key in mapping:
            if not isinstance(key, str) or not paths.NAME_PATTERN.fullmatch(key):
                raise ValueError(f"bad name {key!r}; {paths.NAME_RULE}")
            if section and "." in key:
                raise ValueError(
                    f"bad name {key!r}; {section} names may not hold '.' (dvc.yaml tracks '{section}.{key}' "
                    "as a params key, and DVC reads each '.' as a level): use '-' or '_'"
                )
    return mapping


# --------------------------------------------------------------------------- data


class _SplitSizes(Frozen):
    """The synthetic tasks' split sizes, and what their evaluations report."""

    EVAL_METRICS: ClassVar[tuple[str, ...]] = ("loss", "token_accuracy", "exact_match", "bleu")
    """A dataset config's EVAL_METRICS: the keys of every evaluation its workload reports
    (train/seq2seq_workload.py, train/language_model_workload.py), in the log's order,
    and what `train.stop_when.metric` may name for a run on it."""

    n_train: Annotated[int, Field(ge=1, le=MAX_EXAMPLES)] = 20000
    n_valid: Annotated[int, Field(ge=1, le=MAX_EXAMPLES)] = 500
    n_test: Annotated[int, Field(ge=1, le=MAX_EXAMPLES)] = 1000
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 1


class SymbolTaskConfig(_SplitSizes):
    """Integer-sequence tasks over content symbols 3..vocab_size-1 (data/synthetic.py).

    copy: target = source; reverse: content reversed; structured: content is one or
    more runs of consecutive symbols from random starts, target = source; pairwise_sum:
    y_k = x_k + x_(k-1) with x_0 = the <go> id 1 (the target vocabulary grows to fit).
    """

    task: Literal["copy", "reverse", "structured", "pairwise_sum"] = "copy"
    vocab_size: Annotated[int, Field(ge=4, le=MAX_VOCAB)] = 20
    content_length: Annotated[int, Field(ge=1, le=MAX_LENGTH)] = 4
    run_length: Optional[Annotated[int, Field(ge=1, le=MAX_LENGTH)]] = None
    """structured: content is runs of this many consecutive symbols, each from a random
    start (the last run may be shorter); default content_length, a single run."""

    def runs(self) -> list[int]:
        """structured: the length of each run of consecutive symbols in the content."""
        size = self.run_length or self.content_length
        full, rest = divmod(self.content_length, size)
        return [size] * full + ([rest] if rest else [])

    def distinct_sources(self) -> int:
        symbols = self.vocab_size - 3
        if self.task == "structured":
            return math.prod(max(symbols - n + 1, 0) for n in self.runs())
        return symbols**self.content_length

    @model_validator(mode="after")
    def _room_for_training(self) -> "SymbolTaskConfig":
        distinct, held_out = self.distinct_sources(), self.n_valid + self.n_test
        if held_out >= distinct:
            raise ValueError(
                f"n_valid + n_test = {held_out} leaves nothing to train on: the {self.task} task has "
                f"{distinct} distinct sequences of length {self.content_length} over {self.vocab_size - 3} symbols"
            )
        return self


class PolynomialTaskConfig(_SplitSizes):
    """Character level: a product of two linear factors -> its expansion, e.g.
    `(7-3*z)*(-5*z-9) -> 15*z**2-8*z-63` (checked with sympy)."""

    task: Literal["polynomial"] = "polynomial"
    variables: Annotated[str, Field(min_length=1, pattern="^[a-z]+$")] = "abcxyz"
    max_coefficient: Annotated[int, Field(ge=1, le=99)] = 9


class DatesTaskConfig(_SplitSizes):
    """Character level: a date in one of many human formats -> ISO `YYYY-MM-DD`."""

    task: Literal["dates"] = "dates"
    first_year: Annotated[int, Field(ge=1000, le=9999)] = 1950
    last_year: Annotated[int, Field(ge=1000, le=9999)] = 2049

    @model_validator(mode="after")
    def _years_ordered(self) -> "DatesTaskConfig":
        if self.last_year < self.first_year:
            raise ValueError(f"last_year ({self.last_year}) is before first_year ({self.first_year})")
        return self


class TranslationTaskConfig(Frozen):
    """Sentence pairs from a real corpus, Moses-tokenised and BPE-encoded with a joint
    subword-nmt vocabulary (data/translation.py).

    With a mirror, the offline corpus is newstest2014 and every subset is drawn from it;
    online, train comes from `training_corpus` and valid/test from newstest2014.
    """

    EVAL_METRICS: ClassVar[tuple[str, ...]] = ("loss", "token_accuracy", "bleu", "chrf")

    task: Literal["translation"] = "translation"
    corpus: Literal["wmt14"] = "wmt14"
    source_lang: Literal["en"] = "en"
    target_lang: Literal["fr"] = "fr"
    training_corpus: Literal["newstest2014", "wmt14-europarl-v7", "wmt14-news-commentary-v9"] = "newstest2014"
    n_train: Annotated[int, Field(ge=1, le=MAX_EXAMPLES)] = 1024
    n_valid: Annotated[int, Field(ge=1, le=MAX_EXAMPLES)] = 64
    n_test: Annotated[int, Field(ge=1, le=MAX_EXAMPLES)] = 64
    bpe_merges: Annotated[int, Field(ge=1, le=MAX_VOCAB)] = 2000
    shared_vocab: bool = True
    """One vocabulary for both sides (from the BPE'd training text of both languages), or
    a source vocabulary and a target vocabulary; the BPE codes are joint either way."""
    max_tokens: Annotated[int, Field(ge=4, le=MAX_LENGTH)] = 100
    """Pairs whose BPE source or target is longer are dropped from train (never from valid/test)."""
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 1


class LanguageModelTaskConfig(Frozen):
    """Word-level language modelling on `wiki.{train,valid,test}.tokens` (data/language_model.py):
    from the fetched WikiText-2 corpus, or from `path`, a folder holding three such files."""

    EVAL_METRICS: ClassVar[tuple[str, ...]] = ("loss", "perplexity")

    task: Literal["language_model"] = "language_model"
    corpus: Literal["wikitext2"] = "wikitext2"
    path: Optional[str] = None
    """A folder with the user's own wiki.{train,valid,test}.tokens; replaces the download."""
    train_tokens: Optional[Annotated[int, Field(ge=1000, le=MAX_TOKENS)]] = None
    """Keep only the first this many tokens of the training stream (null: all of it), so
    an epoch fits the smoke scale; the vocabulary still comes from the whole training
    file, and the data card records the cut."""
    eval_tokens: Optional[Annotated[int, Field(ge=1000, le=MAX_TOKENS)]] = None
    """The same for the validation and test streams (null: all of them)."""


DatasetConfig = Annotated[
    Union[SymbolTaskConfig, PolynomialTaskConfig, DatesTaskConfig, TranslationTaskConfig, LanguageModelTaskConfig],
    Field(discriminator="task"),
]
SYNTHETIC = (SymbolTaskConfig, PolynomialTaskConfig, DatesTaskConfig)


# -------------------------------------------------------------------------- model


class InitConfig(Frozen):
    """Named initialisation choices (see models/init.py)."""

    tie: Literal["none", "qk", "qkv"] = "none"
    """Projections equal at init: none; qk, W_K = W_Q; qkv, W_K = W_V = W_Q (then trained apart)."""
    zero_wo: bool = False
    embedding_std: Literal["one", "inv_sqrt_d"] = "inv_sqrt_d"
    position_std_ratio: Annotated[float, Field(gt=0)] = 1.0


class ModelConfig(Frozen):
    """One model family per `arch`; keys a family does not use are ignored by it.

    encoder_decoder: n_encoder_layers + n_decoder_layers; gpt (decoder-only LM) and
    lstm (LSTM LM): n_layers. d_model is the embedding width of every family;
    hidden_size is the LSTM's state width (default d_model). custom: the user's model,
    built by `factory` (models/custom.py states the contract), which receives this
    whole section; its own keys go under `options`.
    """

    arch: Literal["encoder_decoder", "gpt", "lstm", "custom"] = "encoder_decoder"
    factory: Optional[str] = None
    """arch custom: the function that builds the model, 'path/to/file.py:function'
    (relative to params.yaml's folder) or 'package.module:function' (config/factory.py)."""
    options: dict[str, Any] = {}
    """arch custom: the user's own keys, free-form, passed to the factory with this
    section (any other unknown key is still refused)."""
    d_model: Annotated[int, Field(ge=1, le=MAX_WIDTH)] = 64
    n_heads: Annotated[int, Field(ge=1, le=MAX_HEADS)] = 2
    n_encoder_layers: Annotated[int, Field(ge=1, le=MAX_LAYERS)] = 2
    n_decoder_layers: Annotated[int, Field(ge=1, le=MAX_LAYERS)] = 2
    n_layers: Annotated[int, Field(ge=1, le=MAX_LAYERS)] = 2
    hidden_size: Optional[Annotated[int, Field(ge=1, le=MAX_WIDTH)]] = None
    tie_embeddings: bool = False
    lstm_impl: Literal["fused", "scratch"] = "fused"
    d_ff: Annotated[int, Field(ge=1, le=MAX_FF)] = 256
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    attention: Literal["manual", "sdpa"] = "sdpa"
    norm: Literal["pre", "post"] = "pre"
    positions: Literal["learned", "sinusoidal"] = "learned"
    max_len: Annotated[int, Field(ge=2, le=MAX_LENGTH)] = 64
    """Longest sequence the position table covers (transformers)."""
    init: InitConfig = InitConfig()
    checkpointing: Literal["none", "blocks"] = "none"
    """Activation checkpointing (Chen et al. 2016, "Training Deep Nets with Sublinear
    Memory Cost"): 'blocks' keeps only each Transformer block's input for backward and
    recomputes the block's activations there, trading about one more forward pass for
    memory; the gradients are the same (tests/test_checkpointing.py). Training only:
    evaluation and decoding run the blocks plainly. The LSTM has no blocks."""
    _folder: Path = PrivateAttr(default_factory=lambda: Path("."))
    """The folder of params.yaml, which a factory's file is relative to; set by loading.validate."""

    @property
    def folder(self) -> Path:
        return self._folder

    def source_file(self, key: str = "model.factory") -> Path:
        """arch custom: the factory's source file (a ConfigError naming `key` if there is none)."""
        return factories.source_file(self.factory, self._folder, key)

    def source_digest(self, key: str = "model.factory") -> str:
        """arch custom: the digest of the factory's source file."""
        return factories.source_digest(self.factory, self._folder, key)

    @field_validator("factory")
    @classmethod
    def _factory_format(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            factories.parse(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "ModelConfig":
        if self.arch == "custom":
            if self.factory is None:
                raise ValueError(f"arch 'custom' needs model.factory: {factories.FORMAT}")
            if self.checkpointing != "none":
                raise ValueError(
                    "checkpointing 'blocks' applies to this project's Transformer blocks, not to a custom model; "
                    "set model.checkpointing: none"
                )
        else:
            for key, value in (("factory", self.factory), ("options", self.options)):
                if value:
                    raise ValueError(f"model.{key} is read only with arch 'custom' (arch is '{self.arch}')")
        if self.arch == "lstm" and self.checkpointing != "none":
            raise ValueError(
                f"checkpointing '{self.checkpointing}' needs Transformer blocks and arch 'lstm' has none; "
                "set model.checkpointing: none or model.arch: gpt or encoder_decoder"
            )
        if self.arch == "lstm" and self.tie_embeddings and self.hidden_size not in (None, self.d_model):
            raise ValueError(
                f"tie_embeddings needs hidden_size == d_model for an LSTM (got {self.hidden_size} and {self.d_model})"
            )
        if self.arch in ("encoder_decoder", "gpt") and self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        return self


# ----------------------------------------------------------------------- training


CompileMode = Literal["off", "default", "max-autotune-no-cudagraphs"]
"""`train.compile`'s values (train/compiling.py says why the CUDA graph modes are not among them)."""


class StopWhen(Frozen):
    """`train.stop_when`: a seed stops training once its validation `metric` has been at
    least `at_least` (or at most `at_most`) at every evaluation for `for_steps` steps
    (0: at the first evaluation that meets it), instead of running on to max_steps or
    epochs. It then ends as any finished seed does (status completed, final evaluation on
    every example), its summary saying it stopped early. The metrics a run may name are
    its dataset config's EVAL_METRICS (checked when the file loads)."""

    metric: str
    at_least: Optional[float] = None
    at_most: Optional[float] = None
    for_steps: Annotated[int, Field(ge=0, le=MAX_STEPS)] = 0

    @model_validator(mode="after")
    def _one_bound(self) -> "StopWhen":
        if (self.at_least is None) == (self.at_most is None):
            raise ValueError("set exactly one of at_least and at_most")
        return self

    def met_by(self, value: float) -> bool:
        return value >= self.at_least if self.at_least is not None else value <= self.at_most

    def describe(self) -> str:
        bound = f">= {self.at_least:g}" if self.at_least is not None else f"<= {self.at_most:g}"
        return f"valid {self.metric} {bound}" + (f" at every evaluation for {self.for_steps} steps" if self.for_steps else "")


class TrainConfig(Frozen):
    optimizer: Literal["sgd", "momentum", "adam", "adamw"] = "adam"
    lr: Annotated[float, Field(gt=0)] = 1.0
    """noam: the factor of Vaswani et al.'s eq. 3 (1.0 in the paper); cosine, constant: the peak rate."""
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.98)
    """Adam's (beta1, beta2), each in [0, 1) (Kingma & Ba 2015, Algorithm 1)."""
    eps: Annotated[float, Field(gt=0)] = 1e-9
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    schedule: Literal["noam", "cosine", "constant"] = "noam"
    warmup_steps: Annotated[int, Field(ge=0, le=MAX_STEPS)] = 400
    min_lr_ratio: Annotated[float, Field(ge=0, le=1)] = 0.0
    max_steps: Optional[Annotated[int, Field(ge=1, le=MAX_STEPS)]] = 1000
    epochs: Optional[Annotated[int, Field(ge=1, le=MAX_EPOCHS)]] = None
    """Train for this many passes over the training data instead of max_steps (set one of the two)."""
    bptt: Annotated[int, Field(ge=2, le=MAX_LENGTH)] = 35
    """Language models: tokens per segment (truncated backpropagation through time)."""
    batch_size: Annotated[int, Field(ge=1, le=MAX_BATCH)] = 100
    batch_tokens: Optional[Annotated[int, Field(ge=1, le=MAX_BATCH_TOKENS)]] = None
    """Seq2seq on real text: length-bucketed batches of about this many target tokens
    instead of batch_size sentences."""
    micro_batches: Annotated[int, Field(ge=1, le=MAX_BATCH)] = 1
    devices: Annotated[int, Field(ge=1, le=MAX_DEVICES)] = 1
    """Processes (GPUs, or CPU processes without CUDA) one run trains on with
    DistributedDataParallel: the stage starts them with torchrun (train/distributed.py).
    Each sees 1/devices of every step's batch, so the global batch is batch_size either way."""
    beam_size: Annotated[int, Field(ge=1, le=MAX_BEAM)] = 1
    """Beam width of held-out decoding (1 = greedy)."""
    clip_grad_norm: Optional[Annotated[float, Field(gt=0)]] = 1.0
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    unsupported_precision: Literal["stop", "record"] = "stop"
    """When the device cannot train in `precision` (fp16 without CUDA, bf16 without native
    support): 'stop' refuses the run with a one-line error; 'record' finishes it untrained
    with `status: unsupported` and the reason (train/unsupported.py), so a study's other
    runs go on. Either way the run never trains in another precision."""
    compile: CompileMode = Field(
        default="off", exclude_if=lambda value: value == "off")
    """The training forward through torch.compile in this mode, or eager (train/compiling.py).
    YAML reads a bare `off` as false and `on` as true: false is 'off', true 'default'.
    Left out of a dump while off, so runs configured before it existed keep their digests."""
    eval_every: Optional[Annotated[int, Field(ge=1, le=MAX_STEPS)]] = 100
    """Steps between evaluations; null: at the end of every epoch. A run sized in `epochs`
    counts them from each epoch's start and is evaluated at each epoch's end as well
    (train/loop.py, `evaluates_after`)."""
    stop_when: Optional[StopWhen] = Field(default=None, exclude_if=lambda value: value is None)
    """Stop a seed early on a validation criterion (`StopWhen`); null: never. Left out of a
    dump while null, so runs configured before it existed keep their digests."""
    eval_examples: Annotated[int, Field(ge=1, le=MAX_EXAMPLES)] = 500
    checkpoint_every: Annotated[int, Field(ge=1, le=MAX_STEPS)] = 100
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 0

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_switch(cls, value: Any) -> Any:
        return {False: "off", True: "default"}[value] if isinstance(value, bool) else value

    @model_validator(mode="after")
    def _consistent(self) -> "TrainConfig":
        if (self.max_steps is None) == (self.epochs is None):
            raise ValueError("set exactly one of max_steps and epochs (the other null)")
        if self.schedule == "noam" and self.warmup_steps < 1:
            raise ValueError("schedule 'noam' needs warmup_steps >= 1 (got 0); use 'constant' for no warmup")
        if self.batch_size % self.micro_batches:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be divisible by micro_batches ({self.micro_batches})"
            )
        if self.devices > 1 and not self.batch_tokens and self.batch_size % (self.micro_batches * self.devices):
            raise ValueError(
                f"batch_size ({self.batch_size}) must be divisible by micro_batches x devices "
                f"({self.micro_batches} x {self.devices}): each device takes an equal share of every step"
            )
        return self


class RunConfig(Frozen):
    """Everything one training run needs: the study defaults merged with the run's overrides."""

    dataset: Name
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    seeds: Annotated[int, Field(ge=1, le=MAX_SEEDS)] = 1
    """Seeds train.seed, train.seed + 1, ...: each trains in its own `seed-<n>/` folder."""
    grid: Optional[str] = None
    variant: dict[str, Any] = {}
    """For a grid run: the varied keys (dotted paths) and this run's values."""
    # Left out of a dump while unset, so a reference run's dump, digest and fingerprint
    # stay what they were before own_models existed (its checkpoints still resume).
    own_model: Optional[str] = Field(default=None, exclude_if=lambda value: value is None)
    """Set by loading, never in the file: for a run that trains one of `own_models` in
    place of the reference's model, that model's name..."""
    reference_run: Optional[str] = Field(default=None, exclude_if=lambda value: value is None)
    """...and the run it stands beside (same data, seeds and training settings)."""

    @model_validator(mode="after")
    def _language_model_fits(self) -> "RunConfig":
        # Checked here, at load time, so a bad pair fails before any stage runs.
        if self.model.arch == "gpt" and self.train.bptt > self.model.max_len:
            raise ValueError(
                f"train.bptt ({self.train.bptt}) exceeds model.max_len ({self.model.max_len}): a GPT segment "
                "must fit its position table; raise model.max_len or lower train.bptt"
            )
        if self.model.arch == "lstm" and self.train.micro_batches > 1:
            raise ValueError(
                f"train.micro_batches ({self.train.micro_batches}) must be 1 for an LSTM: its hidden state "
                "carries across segments of the same streams, so a step cannot be split"
            )
        return self

    def digest(self, extra: Any = None) -> str:
        """Identity of the run's configuration (and `extra`, e.g. its dataset's config)."""
        # What happens to a run the device cannot train is not part of what it trains.
        dumped = self.model_dump(mode="json", exclude={"seeds": True, "train": {"unsupported_precision"}})
        if self.model.arch == "custom":  # the user's model code is part of what the run trains
            return json_digest([dumped, extra, self.model.source_digest()])
        return json_digest([dumped, extra])

    def twin_fields(self) -> dict[str, str]:
        """`own_model` and `reference_run` for a run's summary, where set (a run of the
        reference's model has neither, and its summary is as it was before own_models)."""
        return {"own_model": self.own_model, "reference_run": self.reference_run} if self.own_model else {}

    def factory_key(self, study: str, run: str) -> str:
        """The key an error about the run's custom model factory names."""
        if self.own_model:
            return f"own_models.{self.own_model}.factory"
        return f"studies.{study}.runs.{run}.model.factory"

    def seed_values(self) -> list[int]:
        return [self.train.seed + i for i in range(self.seeds)]


class GridConfig(Frozen):
    """An ablation grid: every combination of `vary` values, on each of `datasets`.

    Runs are named `<grid>-<dataset>-<n>` (n = 1.. in combination order), so a scale
    may change the values but not the number of runs; the values themselves are kept
    in each run's `variant` for the report.
    """

    datasets: Optional[Annotated[list[Name], Field(min_length=1)]] = None
    """Default: the study's dataset."""
    vary: Annotated[dict[str, Annotated[list[Any], Field(min_length=1)]], Field(min_length=1)]
    """Axis -> values; the grid is the product of the axes. An axis is a dotted key
    (e.g. train.warmup_steps) with one value per variant, or a name whose values are
    mappings of dotted keys, set together: a linked axis, for keys that only make sense
    in some combinations (a learned-position std has no meaning for sinusoidal positions)."""
    overrides: dict[str, Any] = {}
    """Applied to every run of the grid before the varied values (same keys as a run)."""

    @field_validator("vary")
    @classmethod
    def _axes_are_uniform(cls, vary: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for axis, values in vary.items():
            linked = [isinstance(value, dict) for value in values]
            if any(linked) and not all(linked):
                raise ValueError(
                    f"axis '{axis}' mixes mappings and plain values: either every value is a value of "
                    f"the dotted key '{axis}', or every value is a mapping of dotted keys set together"
                )
            if all(linked) and any(not value for value in values):
                raise ValueError(f"axis '{axis}': a linked value must set at least one dotted key")
        return vary

    def variants(self) -> list[dict[str, Any]]:
        """Every combination, in order, as a flat mapping of dotted key -> value."""
        axes = [
            values if isinstance(values[0], dict) else [{axis: value} for value in values]
            for axis, values in self.vary.items()
        ]
        out = []
        for combination in itertools.product(*axes):
            variant: dict[str, Any] = {}
            for part in combination:
                variant.update(part)
            out.append(variant)
        return out


class StudyConfig(Frozen):
    priority: int = 0
    """Snakemake starts ready jobs of higher-priority studies (and their data stages)
    first: give the study with the longest runs the highest, so it overlaps the rest."""
    dataset: Optional[Name] = None
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    seeds: Annotated[int, Field(ge=1, le=MAX_SEEDS)] = 1
    runs: dict[str, dict[str, Any]] = {}
    """Run name -> overrides of the study's defaults (same keys: dataset, model, train, seeds)."""
    grids: dict[str, GridConfig] = {}

    @field_validator("runs", "grids", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        return _named(value)

    @model_validator(mode="after")
    def _has_runs(self) -> "StudyConfig":
        if not self.runs and not self.grids:
            raise ValueError("a study needs at least one entry under runs or grids")
        self.run_overrides()  # refuses a grid run name that collides with another run
        return self

    def run_overrides(self) -> dict[str, tuple[str, dict]]:
        """Every run name -> (where it is defined, its overrides of the study defaults)."""
        out = {name: (f"runs.{name}", overrides) for name, overrides in self.runs.items()}
        for grid_name, grid in self.grids.items():
            for dataset in grid.datasets or [self.dataset]:
                for n, variant in enumerate(grid.variants(), start=1):
                    name = f"{grid_name}-{dataset}-{n}" if grid.datasets and len(grid.datasets) > 1 else f"{grid_name}-{n}"
                    overrides = deep_merge(grid.overrides, {"grid": grid_name, "variant": variant})
                    if dataset:
                        overrides["dataset"] = dataset
                    for key, value in variant.items():
                        overrides = deep_merge(overrides, _nested(key, value))
                    if name in out:
                        raise ValueError(f"run name '{name}' of grid '{grid_name}' is also defined elsewhere")
                    if not paths.NAME_PATTERN.fullmatch(name):
                        raise ValueError(
                            f"run name '{name}' of grid '{grid_name}' is longer than 100 characters; "
                            "shorten the grid's name or its datasets' names"
                        )
                    out[name] = (f"grids.{grid_name}", overrides)
        return out


def _nested(dotted: str, value: Any) -> dict:
    node: Any = value
    for part in reversed(dotted.split(".")):
        node = {part: node}
    return node


# -------------------------------------------------------------------------- top


class DataConfig(Frozen):
    mirror: Optional[str] = None
    """Folder laid out like `../shared/data`; files come from it instead of the network."""


class DevicesConfig(Frozen):
    lock_dir: Optional[str] = None
    """Folder of per-GPU lock files shared by every job on the machine (default: /tmp/tdiag-gpu-locks, whatever TMPDIR is)."""
    jobs_per_gpu: Annotated[int, Field(ge=1, le=64)] = 1
    """How many training jobs may share one GPU (the toy models use a sliver of one)."""


SHIPPED_ARCHS = ("encoder_decoder", "gpt", "lstm")


class OwnModelConfig(Frozen):
    """The user's model, trained beside the reference: every run of the selected studies
    whose model is `replaces` gets a twin run `<run>.<name>` with the same data, seeds
    and training settings, whose model is built by `factory` (arch custom). The factory
    receives the reference run's model section (sizes, depth, dropout, init, ...) with
    `options`, so a grid over model keys varies the user's model as far as it reads them."""

    factory: str
    """'path/to/file.py:function' (relative to params.yaml's folder) or 'package.module:function'."""
    replaces: Literal["encoder_decoder", "gpt", "lstm"]
    """The shipped architecture the model stands beside: encoder_decoder (the toy, wmt14
    tasks), gpt or lstm (language models)."""
    options: dict[str, Any] = {}
    studies: Optional[dict[Name, Union[Literal["all"], Annotated[list[Name], Field(min_length=1)]]]] = None
    """Study -> 'all' or the run and grid names to twin; default: every study. A run with
    activation checkpointing is not twinned (it checkpoints the project's own blocks)."""

    @field_validator("factory")
    @classmethod
    def _factory_format(cls, value: str) -> str:
        factories.parse(value)
        return value


class Config(Frozen):
    scale: Literal["auto", "smoke", "full"] = "auto"
    data: DataConfig = DataConfig()
    devices: DevicesConfig = DevicesConfig()
    datasets: dict[str, DatasetConfig]
    studies: dict[str, StudyConfig]
    own_models: dict[str, OwnModelConfig] = {}
    """Name -> a model of the user's own, trained beside the reference in the studies
    (OwnModelConfig); its runs are named `<run>.<name>`."""
    scales: dict[Literal["smoke", "full"], dict[str, Any]] = {}

    @field_validator("datasets", mode="before")
    @classmethod
    def _dataset_names(cls, value: Any) -> Any:
        return _named(value, "datasets")

    @field_validator("own_models", mode="before")
    @classmethod
    def _own_model_names(cls, value: Any) -> Any:
        return _named(value, "own_models")

    @field_validator("studies", mode="before")
    @classmethod
    def _study_names(cls, value: Any) -> Any:
        if isinstance(value, dict) and paths.REPORT_INDEX in value:
            raise ValueError(
                f"the study name '{paths.REPORT_INDEX}' is reserved: `tdiag report {paths.REPORT_INDEX}` "
                f"renders {paths.report_index()}; rename the study"
            )
        return _named(value, "studies")

    # resolved at load time, never read from the file
    resolved_scale: Literal["smoke", "full"] = "smoke"
    _runs: dict[str, dict[str, RunConfig]] = PrivateAttr(default_factory=dict)
    """Study -> run name -> its resolved RunConfig at `resolved_scale`; filled once by
    `loading.validate`, the only place a Config is made."""

    def study(self, name: str) -> StudyConfig:
        if name not in self.studies:
            raise ConfigError(f"unknown study {name!r}; studies: {', '.join(self.studies)}")
        return self.studies[name]

    def run(self, study: str, run: str) -> RunConfig:
        """The run's study defaults merged with its overrides, as resolved at load time."""
        self.study(study)
        runs = self._runs[study]
        if run not in runs:
            raise ConfigError(f"unknown run {run!r} in study '{study}'; runs: {', '.join(runs)}")
        return runs[run]

    def run_names(self, study: str) -> list[str]:
        self.study(study)
        return list(self._runs[study])

    @property
    def mirror(self) -> Optional[Path]:
        return Path(self.data.mirror) if self.data.mirror else None

