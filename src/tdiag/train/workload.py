"""What the training loop asks of a workload, and the batch a workload hands it.

The loop (train/loop.py) knows nothing of sequences, pairs or streams: a workload owns
a dataset's batches, loss and evaluation, and the loop only calls what `Workload`
declares. Every workload is built as `Workload(folder, meta, train, device)` (the
dataset's folder, its `meta.json`, the run's `TrainConfig` and the torch device); the
dataset kinds registry (data/kinds.py) says which class a dataset uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch


@dataclass
class StepBatch:
    """The data of one optimizer step."""

    micro: list
    """The micro-batches of the step (`train.micro_batches` of them), in the workload's own format."""
    n_tokens: int
    """Tokens the step's loss is averaged over, across all its micro-batches."""
    stats: dict
    """Extra fields of the step's metrics record (e.g. `tokens`, `sentences`)."""
    whole: Any
    """The step's batch un-split, in the same format as a micro-batch (its loss is also
    divided by `n_tokens`): the full-batch gradient that train/grad_quality.py compares
    the accumulated one with."""
    fillers: frozenset = frozenset()
    """Positions in `micro` of parts that had no example (a length bucket of fewer
    sentences than parts), filled with the step's first example: the loop weighs their
    loss by 0. They run so that every process of a distributed run calls forward and
    backward as often as the others (DDP's collectives must match)."""


@runtime_checkable
class Workload(Protocol):
    """A dataset's training and evaluation, as the training loop uses it."""

    pad_id: Optional[int]
    """The padding id the model ignores (None: the data has no padding)."""
    steps_per_epoch: int
    """Optimizer steps that read the training split once."""
    eval_splits: tuple[str, ...]
    """Splits evaluated every `eval_every` steps and at step 0; `valid` comes first."""
    log_keys: tuple[str, ...]
    """Metric names (keys of `evaluate`'s result) written to the log after an evaluation."""
    best: tuple[str, str]
    """(metric, 'max' or 'min'): the headline metric that picks a seed's best validation step."""
    tokens_per_step: Optional[int]
    """Target tokens of a full optimizer step as configured (recorded in each seed's
    config.json), or None where the count depends on the batch drawn (padding, length
    buckets); each step's own count is its record's `tokens`."""

    @property
    def vocab_sizes(self) -> tuple[int, int]:
        """(source, target) vocabulary sizes the model is built with (equal for a language model)."""
        ...

    def reset(self) -> None:
        """Forget state carried between steps (e.g. an LSTM's hidden state); called before a seed trains."""
        ...

    def state_dict(self) -> dict:
        """The carried state, saved in every checkpoint so a resumed run continues exactly."""
        ...

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned."""
        ...

    def train_batch(self, step: int, seed: int) -> StepBatch:
        """The batch of optimizer step `step` (1-based) of the seed's run."""
        ...

    def loss(self, model: torch.nn.Module, micro: Any, n_tokens: int, label_smoothing: float) -> torch.Tensor:
        """Summed loss of one micro-batch divided by the step's `n_tokens`, so that
        accumulating the micro-batches gives the gradient of the whole step."""
        ...

    def evaluate(self, model: torch.nn.Module, split: str, decode_limit: Optional[int] = None) -> dict:
        """Held-out metrics of a split (every key of `log_keys` and of `best` among
        them); `decode_limit` caps the examples decoded, None: all."""
        ...

    def scores_whole_split(self, split: str, decode_limit: Optional[int]) -> bool:
        """Whether `evaluate(model, split, decode_limit)` scores every example of the split,
        so that a periodic evaluation at the last step is also the final one."""
        ...

    def samples(self, model: torch.nn.Module) -> list[dict]:
        """A few model outputs beside their references, for the report."""
        ...
