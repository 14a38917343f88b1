"""The one configuration: `params.yaml`, validated once, frozen, passed in.

Loading merges, in order: the file, the `scales.<scale>` section for the resolved
scale, then `--set key=value` overrides. Both scale sections are validated on every
load, so a typo in the section that is not in use still fails fast. Errors are one
line naming the key's full path and what is allowed (`ConfigError`).
"""

from __future__ import annotations

import copy
import json
import hashlib
import itertools
import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MIRROR_ENV = "TDIAG_DATA_MIRROR"
SCALES = ("smoke", "full")


class ConfigError(ValueError):
    """A problem with the user's configuration: printed as one line, exit code 2."""


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- data


class _SplitSizes(Frozen):
    n_train: Annotated[int, Field(ge=1)] = 20000
    n_valid: Annotated[int, Field(ge=1)] = 500
    n_test: Annotated[int, Field(ge=1)] = 1000
    seed: int = 1


class SymbolTaskConfig(_SplitSizes):
    """Integer-sequence tasks over content symbols 3..vocab_size-1 (data/synthetic.py).

    copy: target = source; reverse: content reversed; structured: content is one or
    more runs of consecutive symbols from random starts, target = source; pairwise_sum:
    y_k = x_k + x_(k-1) with x_0 = the <go> id 1 (the target vocabulary grows to fit).
    """

    task: Literal["copy", "reverse", "structured", "pairwise_sum"] = "copy"
    vocab_size: Annotated[int, Field(ge=4)] = 20
    content_length: Annotated[int, Field(ge=1)] = 4
    run_length: Optional[Annotated[int, Field(ge=1)]] = None
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

    task: Literal["translation"] = "translation"
    corpus: Literal["wmt14"] = "wmt14"
    source_lang: Literal["en"] = "en"
    target_lang: Literal["fr"] = "fr"
    training_corpus: Literal["newstest2014", "wmt14-europarl-v7", "wmt14-news-commentary-v9"] = "newstest2014"
    n_train: Annotated[int, Field(ge=1)] = 1024
    n_valid: Annotated[int, Field(ge=1)] = 64
    n_test: Annotated[int, Field(ge=1)] = 64
    bpe_merges: Annotated[int, Field(ge=1)] = 2000
    shared_vocab: bool = True
    """One vocabulary for both sides (from the BPE'd training text of both languages), or
    a source vocabulary and a target vocabulary; the BPE codes are joint either way."""
    max_tokens: Annotated[int, Field(ge=4)] = 100
    """Pairs whose BPE source or target is longer are dropped from train (never from valid/test)."""
    seed: int = 1


class LanguageModelTaskConfig(Frozen):
    """Word-level language modelling on `wiki.{train,valid,test}.tokens` (data/lm.py):
    from the fetched WikiText-2 corpus, or from `path`, a folder holding three such files."""

    task: Literal["language_model"] = "language_model"
    corpus: Literal["wikitext2"] = "wikitext2"
    path: Optional[str] = None
    """A folder with the user's own wiki.{train,valid,test}.tokens; replaces the download."""
    train_tokens: Optional[Annotated[int, Field(ge=1000)]] = None
    """Keep only the first this many tokens of the training stream (null: all of it), so
    an epoch fits the smoke scale; the vocabulary still comes from the whole training
    file, and the data card records the cut."""
    eval_tokens: Optional[Annotated[int, Field(ge=1000)]] = None
    """The same for the validation and test streams (null: all of them)."""


DatasetConfig = Annotated[
    Union[SymbolTaskConfig, PolynomialTaskConfig, DatesTaskConfig, TranslationTaskConfig, LanguageModelTaskConfig],
    Field(discriminator="task"),
]
SYNTHETIC = (SymbolTaskConfig, PolynomialTaskConfig, DatesTaskConfig)


# -------------------------------------------------------------------------- model


class InitConfig(Frozen):
    """Named initialisation choices (see models/init.py)."""

    tie_qk: bool = False
    zero_wo: bool = False
    embedding_std: Literal["one", "inv_sqrt_d"] = "inv_sqrt_d"
    position_std_ratio: Annotated[float, Field(gt=0)] = 1.0


class ModelConfig(Frozen):
    """One model family per `arch`; keys a family does not use are ignored by it.

    encoder_decoder: n_encoder_layers + n_decoder_layers; gpt (decoder-only LM) and
    lstm (LSTM LM): n_layers. d_model is the embedding width of every family;
    hidden_size is the LSTM's state width (default d_model).
    """

    arch: Literal["encoder_decoder", "gpt", "lstm"] = "encoder_decoder"
    d_model: Annotated[int, Field(ge=1)] = 64
    n_heads: Annotated[int, Field(ge=1)] = 2
    n_encoder_layers: Annotated[int, Field(ge=1)] = 2
    n_decoder_layers: Annotated[int, Field(ge=1)] = 2
    n_layers: Annotated[int, Field(ge=1)] = 2
    hidden_size: Optional[Annotated[int, Field(ge=1)]] = None
    tie_embeddings: bool = False
    lstm_impl: Literal["fused", "scratch"] = "fused"
    d_ff: Annotated[int, Field(ge=1)] = 256
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    attention: Literal["manual", "sdpa"] = "sdpa"
    norm: Literal["pre", "post"] = "pre"
    positions: Literal["learned", "sinusoidal"] = "learned"
    max_len: Annotated[int, Field(ge=2)] = 64
    """Longest sequence the position table covers (transformers)."""
    init: InitConfig = InitConfig()

    @model_validator(mode="after")
    def _consistent(self) -> "ModelConfig":
        if self.arch == "lstm" and self.tie_embeddings and self.hidden_size not in (None, self.d_model):
            raise ValueError(
                f"tie_embeddings needs hidden_size == d_model for an LSTM (got {self.hidden_size} and {self.d_model})"
            )
        if self.arch != "lstm" and self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        return self


# ----------------------------------------------------------------------- training


class TrainConfig(Frozen):
    optimizer: Literal["sgd", "momentum", "adam", "adamw"] = "adam"
    lr: Annotated[float, Field(gt=0)] = 1.0
    """noam: the factor of Vaswani et al.'s eq. 3 (1.0 in the paper); cosine, constant: the peak rate."""
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    betas: tuple[float, float] = (0.9, 0.98)
    eps: Annotated[float, Field(gt=0)] = 1e-9
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    schedule: Literal["noam", "cosine", "constant"] = "noam"
    warmup_steps: Annotated[int, Field(ge=0)] = 400
    min_lr_ratio: Annotated[float, Field(ge=0, le=1)] = 0.0
    max_steps: Optional[Annotated[int, Field(ge=1)]] = 1000
    epochs: Optional[Annotated[int, Field(ge=1)]] = None
    """Train for this many passes over the training data instead of max_steps (set one of the two)."""
    bptt: Annotated[int, Field(ge=2)] = 35
    """Language models: tokens per segment (truncated backpropagation through time)."""
    batch_size: Annotated[int, Field(ge=1)] = 100
    batch_tokens: Optional[Annotated[int, Field(ge=1)]] = None
    """Seq2seq on real text: length-bucketed batches of about this many target tokens
    instead of batch_size sentences."""
    micro_batches: Annotated[int, Field(ge=1)] = 1
    beam_size: Annotated[int, Field(ge=1)] = 1
    """Beam width of held-out decoding (1 = greedy)."""
    clip_grad_norm: Optional[Annotated[float, Field(gt=0)]] = 1.0
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    eval_every: Optional[Annotated[int, Field(ge=1)]] = 100
    """Steps between evaluations; null: at the end of every epoch."""
    eval_examples: Annotated[int, Field(ge=1)] = 500
    checkpoint_every: Annotated[int, Field(ge=1)] = 100
    seed: int = 0

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
        return self


class RunConfig(Frozen):
    """Everything one training run needs: the study defaults merged with the run's overrides."""

    dataset: str
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    seeds: Annotated[int, Field(ge=1)] = 1
    """Seeds train.seed, train.seed + 1, ...: each trains in its own `seed-<n>/` folder."""
    grid: Optional[str] = None
    variant: dict[str, Any] = {}
    """For a grid run: the varied keys (dotted paths) and this run's values."""

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
        text = json.dumps([self.model_dump(mode="json", exclude={"seeds"}), extra], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def seed_values(self) -> list[int]:
        return [self.train.seed + i for i in range(self.seeds)]


class GridConfig(Frozen):
    """An ablation grid: every combination of `vary` values, on each of `datasets`.

    Runs are named `<grid>-<dataset>-<n>` (n = 1.. in combination order), so a scale
    may change the values but not the number of runs; the values themselves are kept
    in each run's `variant` for the report.
    """

    datasets: Optional[Annotated[list[str], Field(min_length=1)]] = None
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
    dataset: Optional[str] = None
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    seeds: Annotated[int, Field(ge=1)] = 1
    runs: dict[str, dict[str, Any]] = {}
    """Run name -> overrides of the study's defaults (same keys: dataset, model, train, seeds)."""
    grids: dict[str, GridConfig] = {}

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
    """Folder of per-GPU lock files shared by every job on the machine (default: <tmp>/tdiag-gpu-locks)."""


class Config(Frozen):
    scale: Literal["auto", "smoke", "full"] = "auto"
    data: DataConfig = DataConfig()
    devices: DevicesConfig = DevicesConfig()
    datasets: dict[str, DatasetConfig]
    studies: dict[str, StudyConfig]
    scales: dict[Literal["smoke", "full"], dict[str, Any]] = {}

    # resolved at load time, never read from the file
    resolved_scale: Literal["smoke", "full"] = "smoke"

    def run(self, study: str, run: str) -> RunConfig:
        return resolve_run(self, study, run)

    def run_names(self, study: str) -> list[str]:
        return list(self.studies[study].run_overrides())

    @property
    def mirror(self) -> Optional[Path]:
        return Path(self.data.mirror) if self.data.mirror else None


# ---------------------------------------------------------------------- loading


def _walk(loc: tuple, model: type[BaseModel]) -> tuple[list, Any]:
    """Follow an error location through the schema.

    Returns the location with pydantic's discriminator tags removed (they are not keys
    in the file) and the schema node that holds the last key, for "allowed keys".
    """
    clean: list = []
    node: Any = model
    parts = list(loc)
    while parts:
        part = parts.pop(0)
        clean.append(part)
        node = _unwrap(node)
        if isinstance(node, type) and issubclass(node, BaseModel):
            field = node.model_fields.get(str(part))
            parent, node = node, (field.annotation if field else None)
        elif get_origin(node) is dict:
            parent, node = node, get_args(node)[1]
        else:
            parent, node = node, None
        tagged = _union_members(node)
        if tagged and parts and parts[0] in tagged:
            node = tagged[parts.pop(0)]
    return clean, parent if loc else model


def _union_members(annotation: Any) -> dict:
    """For a discriminated union of models: tag value -> model class."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    candidates = get_args(annotation) if get_origin(annotation) is Union else (annotation,)
    members = {}
    for member in candidates:
        if isinstance(member, type) and issubclass(member, BaseModel) and "task" in member.model_fields:
            for tag in get_args(member.model_fields["task"].annotation):
                members[tag] = member
    return members


def _unwrap(annotation: Any) -> Any:
    """Strip Optional/Annotated/Union-of-one so the walk reaches the model class."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin is Union:
            args = [a for a in get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def _format_error(err: ValidationError, prefix: str, model: type[BaseModel]) -> str:
    first = err.errors()[0]
    loc, parent = _walk(tuple(first["loc"]), model)
    path = ".".join([prefix] * bool(prefix) + [str(p) for p in loc])
    kind = first["type"]
    if kind == "extra_forbidden":
        if isinstance(parent, type) and issubclass(parent, BaseModel):
            allowed = ", ".join(k for k in parent.model_fields if k != "resolved_scale")
            return f"unknown key '{path}'; allowed keys: {allowed}"
        return f"unknown key '{path}'"
    if kind == "missing":
        return f"missing key '{path}'"
    if kind == "literal_error":
        return f"bad value {first.get('input')!r} for '{path}'; allowed: {first['ctx']['expected']}"
    if kind == "union_tag_invalid":
        tag = first["ctx"]["discriminator"].strip("'")
        return f"bad value {first['ctx']['tag']!r} for '{path}.{tag}'; allowed: {first['ctx']['expected_tags']}"
    message = first["msg"].removeprefix("Value error, ")
    if isinstance(first.get("input"), dict):  # a check across keys of a section
        return f"'{path}': {message}"
    return f"bad value {first.get('input')!r} for '{path}': {message}"


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (['a','b','c'], YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.path=value")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override '{text}' has an empty key")
    return key.strip().split("."), yaml.safe_load(raw) if raw else None


def overrides_from_mapping(mapping: dict, prefix: str = "") -> list[str]:
    """Nested overrides (Snakemake's `--config studies='{toy: {train: {lr: 0.01}}}'`)
    as `key.path=value` strings, one per leaf, so they merge into the file key by key."""
    out = []
    for key, value in mapping.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out += overrides_from_mapping(value, f"{path}.")
        else:
            # Strings go in raw so YAML types them as the file would ("0.01" -> 0.01).
            out.append(f"{path}={value if isinstance(value, str) else json.dumps(value)}")
    return out


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    out = copy.deepcopy(raw)
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{text}': '{k}' is not a section")
        node[keys[-1]] = value
    return out


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_scale(requested: str) -> str:
    if requested == "auto":
        return "full" if cuda_available() else "smoke"
    return requested


def validate(raw: Any, overrides: list[str] = (), *, env: Optional[dict] = None) -> Config:
    """Validate a parsed params mapping into a frozen Config.

    `overrides` (`key.path=value`) win over both the file and its `scales` section.
    Both scale sections are checked, runs included, so a typo in the section not in
    use fails now rather than on another machine.
    """
    env = os.environ if env is None else env
    if not isinstance(raw, dict):
        raise ConfigError("params must be a mapping of sections (scale, data, datasets, studies, ...)")
    if "resolved_scale" in raw:
        raise ConfigError("unknown key 'resolved_scale' (it is computed, not set)")
    raw = apply_overrides(raw, list(overrides))  # so `--set scale=...` picks the scale
    sections = raw.get("scales") or {}
    if not isinstance(sections, dict):
        raise ConfigError("bad value for 'scales': must be a mapping of smoke/full sections")
    file_only = {k: v for k, v in raw.items() if k != "scales"}
    base = _validated(raw, "")
    _resolve_all(base, "")
    for scale in SCALES:
        section = sections.get(scale) or {}
        if not isinstance(section, dict):
            raise ConfigError(f"bad value for 'scales.{scale}': must be a mapping")
        merged = apply_overrides(deep_merge(file_only, section), list(overrides))
        _validated(merged, f"scales.{scale}", keys_in=section)
        cfg = _validated(merged, "")
        if _run_names(cfg) != _run_names(base):
            raise ConfigError(f"'scales.{scale}' may change sizes but not which datasets, studies or runs exist")
        # The file's runs resolved above, so a failure here comes from this section.
        _resolve_all(cfg, f"scales.{scale}.")
    chosen = resolve_scale(base.scale)
    merged = apply_overrides(deep_merge(file_only, sections.get(chosen) or {}), list(overrides))
    merged["scales"] = sections
    merged["resolved_scale"] = chosen
    if env.get(MIRROR_ENV):
        merged["data"] = {**(merged.get("data") or {}), "mirror": env[MIRROR_ENV]}
    return _validated(merged, "")


def _resolve_all(cfg: Config, prefix: str) -> None:
    for study in cfg.studies:
        for run in cfg.studies[study].run_overrides():
            resolve_run(cfg, study, run, prefix)


def _run_names(cfg: Config) -> tuple:
    return (
        tuple(sorted(cfg.datasets)),
        tuple(sorted((s, tuple(sorted(st.run_overrides()))) for s, st in cfg.studies.items())),
    )


def _validated(raw: dict, prefix: str, keys_in: Optional[dict] = None) -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        loc, _ = _walk(tuple(err.errors()[0]["loc"]), Config)
        # Report the error under `scales.<scale>` only when that section set the key.
        node, inside = keys_in, keys_in is not None
        for part in loc:
            if not isinstance(node, dict) or part not in node:
                inside = False
                break
            node = node[part]
        raise ConfigError(_format_error(err, prefix if inside else "", Config)) from None


def resolve_run(cfg: Config, study: str, run: str, prefix: str = "") -> RunConfig:
    """Study defaults merged with the run's overrides, validated as a RunConfig.

    `prefix` goes before the key path in errors (e.g. `scales.full.`)."""
    if study not in cfg.studies:
        raise ConfigError(f"unknown study '{study}'; studies: {', '.join(cfg.studies)}")
    st = cfg.studies[study]
    runs = st.run_overrides()
    if run not in runs:
        raise ConfigError(f"unknown run '{run}' in study '{study}'; runs: {', '.join(runs)}")
    where, overrides = runs[run]
    # Only the keys the study sets: an explicit null (e.g. `max_steps: null` beside
    # `epochs`, `eval_every: null`) must reach the run, not fall back to its default.
    defaults = st.model_dump(mode="json", exclude={"runs", "grids", "priority"}, exclude_unset=True)
    merged = deep_merge(defaults, overrides)
    try:
        rc = RunConfig.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(_format_error(err, f"{prefix}studies.{study}.{where}", RunConfig)) from None
    if rc.dataset not in cfg.datasets:
        raise ConfigError(
            f"bad value {rc.dataset!r} for '{prefix}studies.{study}.{where}.dataset'; "
            f"allowed: {', '.join(cfg.datasets)}"
        )
    return rc


def load(path: str | Path = "params.yaml", overrides: list[str] = (), *, env: Optional[dict] = None) -> Config:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (run from the project root or pass --params)") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(err, 'problem', err)})") from None
    try:
        return validate(raw or {}, overrides, env=env)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
