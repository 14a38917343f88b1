"""The one configuration: `params.yaml`, validated once, frozen, passed in.

- `schema.py`: the pydantic models of every section (unknown keys refused);
- `errors.py`: `ConfigError`, and pydantic errors as one line naming the key's path;
- `overrides.py`: `key.path=value` overrides and merging mappings;
- `loading.py`: `load`/`validate`: file, scale section, overrides; every run resolved once.
"""

from tdiag.config.errors import ConfigError
from tdiag.config.loading import MIRROR_ENV, SCALES, load, validate
from tdiag.config.overrides import apply_overrides, deep_merge, overrides_from_mapping, parse_override
from tdiag.config.schema import (
    SYNTHETIC,
    Config,
    DataConfig,
    DatasetConfig,
    DatesTaskConfig,
    DevicesConfig,
    GridConfig,
    InitConfig,
    LanguageModelTaskConfig,
    ModelConfig,
    PolynomialTaskConfig,
    RunConfig,
    StopWhen,
    StudyConfig,
    SymbolTaskConfig,
    TrainConfig,
    TranslationTaskConfig,
)

__all__ = [
    "MIRROR_ENV",
    "SCALES",
    "SYNTHETIC",
    "Config",
    "ConfigError",
    "DataConfig",
    "DatasetConfig",
    "DatesTaskConfig",
    "DevicesConfig",
    "GridConfig",
    "InitConfig",
    "LanguageModelTaskConfig",
    "ModelConfig",
    "PolynomialTaskConfig",
    "RunConfig",
    "StopWhen",
    "StudyConfig",
    "SymbolTaskConfig",
    "TrainConfig",
    "TranslationTaskConfig",
    "apply_overrides",
    "deep_merge",
    "load",
    "overrides_from_mapping",
    "parse_override",
    "validate",
]
