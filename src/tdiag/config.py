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
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

MIRROR_ENV = "TDIAG_DATA_MIRROR"
SCALES = ("smoke", "full")


class ConfigError(ValueError):
    """A problem with the user's configuration: printed as one line, exit code 2."""


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- data


class CopyTaskConfig(Frozen):
    """Copy task: `[<go>, x_1..x_L, <stop>] -> the same sequence`."""

    task: Literal["copy"] = "copy"
    vocab_size: Annotated[int, Field(ge=4)] = 20
    content_length: Annotated[int, Field(ge=1)] = 4
    n_train: Annotated[int, Field(ge=1)] = 20000
    n_valid: Annotated[int, Field(ge=1)] = 500
    n_test: Annotated[int, Field(ge=1)] = 1000
    seed: int = 1

    @model_validator(mode="after")
    def _enough_distinct(self) -> "CopyTaskConfig":
        distinct = (self.vocab_size - 3) ** self.content_length
        wanted = self.n_train + self.n_valid + self.n_test
        if wanted > distinct:
            raise ValueError(
                f"n_train + n_valid + n_test = {wanted} exceeds the {distinct} distinct sequences "
                f"of length {self.content_length} over {self.vocab_size - 3} symbols"
            )
        return self


DatasetConfig = Annotated[Union[CopyTaskConfig], Field(discriminator="task")]


# -------------------------------------------------------------------------- model


class InitConfig(Frozen):
    """Named initialisation choices (see models/init.py)."""

    tie_qk: bool = False
    zero_wo: bool = False
    embedding_std: Literal["one", "inv_sqrt_d"] = "inv_sqrt_d"
    position_std_ratio: Annotated[float, Field(gt=0)] = 1.0


class ModelConfig(Frozen):
    arch: Literal["encoder_decoder"] = "encoder_decoder"
    d_model: Annotated[int, Field(ge=1)] = 64
    n_heads: Annotated[int, Field(ge=1)] = 2
    n_encoder_layers: Annotated[int, Field(ge=1)] = 2
    n_decoder_layers: Annotated[int, Field(ge=1)] = 2
    d_ff: Annotated[int, Field(ge=1)] = 256
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    attention: Literal["manual", "sdpa"] = "sdpa"
    norm: Literal["pre", "post"] = "pre"
    positions: Literal["learned", "sinusoidal"] = "learned"
    max_len: Annotated[int, Field(ge=2)] = 64
    init: InitConfig = InitConfig()

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "ModelConfig":
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        return self


# ----------------------------------------------------------------------- training


class TrainConfig(Frozen):
    optimizer: Literal["sgd", "momentum", "adam", "adamw"] = "adam"
    lr: Annotated[float, Field(gt=0)] = 1e-3
    """Peak learning rate, reached at the end of warmup for every schedule."""
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    betas: tuple[float, float] = (0.9, 0.98)
    eps: Annotated[float, Field(gt=0)] = 1e-9
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    schedule: Literal["noam", "cosine", "constant"] = "noam"
    warmup_steps: Annotated[int, Field(ge=0)] = 400
    min_lr_ratio: Annotated[float, Field(ge=0, le=1)] = 0.0
    max_steps: Annotated[int, Field(ge=1)] = 1000
    batch_size: Annotated[int, Field(ge=1)] = 100
    micro_batches: Annotated[int, Field(ge=1)] = 1
    clip_grad_norm: Optional[Annotated[float, Field(gt=0)]] = 1.0
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    eval_every: Annotated[int, Field(ge=1)] = 100
    eval_examples: Annotated[int, Field(ge=1)] = 500
    checkpoint_every: Annotated[int, Field(ge=1)] = 100
    seed: int = 0

    @model_validator(mode="after")
    def _consistent(self) -> "TrainConfig":
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

    def digest(self, extra: Any = None) -> str:
        """Identity of the run's configuration (and `extra`, e.g. its dataset's config)."""
        text = json.dumps([self.model_dump(mode="json"), extra], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class StudyConfig(Frozen):
    dataset: Optional[str] = None
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    runs: dict[str, dict[str, Any]] = Field(min_length=1)
    """Run name -> overrides of the study's defaults (same keys: dataset, model, train)."""


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
            members[member.model_fields["task"].default] = member
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


def validate(raw: Any, *, env: Optional[dict] = None) -> Config:
    """Validate a parsed params mapping (with overrides applied) into a frozen Config."""
    env = os.environ if env is None else env
    if not isinstance(raw, dict):
        raise ConfigError("params must be a mapping of sections (scale, data, datasets, studies, ...)")
    if "resolved_scale" in raw:
        raise ConfigError("unknown key 'resolved_scale' (it is computed, not set)")
    base = _validated(raw, "")
    for scale in SCALES:
        section = raw.get("scales", {}).get(scale, {}) or {}
        if not isinstance(section, dict):
            raise ConfigError(f"bad value for 'scales.{scale}': must be a mapping")
        merged = deep_merge({k: v for k, v in raw.items() if k != "scales"}, section)
        _validated(merged, f"scales.{scale}", keys_in=section)
        cfg = _validated(merged, "")
        if _run_names(cfg) != _run_names(base):
            raise ConfigError(
                f"'scales.{scale}' may change sizes but not which datasets, studies or runs exist"
            )
    chosen = resolve_scale(base.scale)
    section = raw.get("scales", {}).get(chosen, {}) or {}
    merged = deep_merge({k: v for k, v in raw.items() if k != "scales"}, section)
    merged["scales"] = raw.get("scales", {})
    merged["resolved_scale"] = chosen
    if env.get(MIRROR_ENV):
        merged.setdefault("data", {})
        merged["data"] = {**(merged["data"] or {}), "mirror": env[MIRROR_ENV]}
    cfg = _validated(merged, "")
    for study in cfg.studies:
        for run in cfg.studies[study].runs:
            resolve_run(cfg, study, run)
    return cfg


def _run_names(cfg: Config) -> tuple:
    return (
        tuple(sorted(cfg.datasets)),
        tuple(sorted((s, tuple(sorted(st.runs))) for s, st in cfg.studies.items())),
    )


def _validated(raw: dict, prefix: str, keys_in: Optional[dict] = None) -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        loc = err.errors()[0]["loc"]
        # Report the error under `scales.<scale>` only when that section set the key.
        node, inside = keys_in, keys_in is not None
        for part in loc:
            if not isinstance(node, dict) or part not in node:
                inside = False
                break
            node = node[part]
        raise ConfigError(_format_error(err, prefix if inside else "", Config)) from None


def resolve_run(cfg: Config, study: str, run: str) -> RunConfig:
    """Study defaults merged with the run's overrides, validated as a RunConfig."""
    if study not in cfg.studies:
        raise ConfigError(f"unknown study '{study}'; studies: {', '.join(cfg.studies)}")
    st = cfg.studies[study]
    if run not in st.runs:
        raise ConfigError(f"unknown run '{run}' in study '{study}'; runs: {', '.join(st.runs)}")
    defaults = st.model_dump(mode="json", exclude={"runs"}, exclude_none=True)
    merged = deep_merge(defaults, st.runs[run])
    try:
        rc = RunConfig.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(_format_error(err, f"studies.{study}.runs.{run}", RunConfig)) from None
    if rc.dataset not in cfg.datasets:
        raise ConfigError(
            f"bad value {rc.dataset!r} for 'studies.{study}.runs.{run}.dataset'; "
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
    raw = apply_overrides(raw or {}, list(overrides))
    try:
        return validate(raw, env=env)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
