"""The summary of a run the device cannot train in its precision (`train.unsupported_precision: record`).

Such a run finishes without training, as a diverged run finishes without converging,
so the rest of a study still trains and reports: its summary has `status:
"unsupported"`, the one-line `reason`, its `seeds`, null metrics, and one `per_seed`
entry per seed in the shape of a trained seed's summary (no steps, no scores), so the
report reads it with the others. No seed file is written: no seed trained, and a seed
summary would later pass for a finished seed on a device that can train it. Its
provenance (the resolved config, device, versions), which a trained seed keeps in
its own `config.json`, is kept in the run summary under `provenance`.

The summary is rewritten each time the stage runs; on a device that can train the
precision the stage trains and replaces it. The pipeline tools cannot see a device
change (it is no input of the stage), so there the stage is rerun by hand
(`dvc repro -f <stage>`, `snakemake --forcerun <rule>`).
"""

from __future__ import annotations

from datetime import datetime, timezone

from tdiag import devices, provenance
from tdiag.config import RunConfig

STATUS = "unsupported"


def run_summary(study: str, run: str, rc: RunConfig, reason: str, device: str, scale: str) -> dict:
    """The run's summary; `device` describes the device it was refused on."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    seeds = rc.seed_values()
    per_seed = [
        {
            "run": run, "seed": seed, "status": STATUS, "reason": reason, "diverged_step": None, "steps": 0,
            "test": None, "valid": None, "train": None, "samples": [], "best_valid": None, "wall_seconds": 0.0,
            "resumed_from": [], "peak_memory_bytes": None, "device": device, "finished_at": now,
        }
        for seed in seeds
    ]
    return {
        "study": study,
        "run": run,
        "status": STATUS,
        "reason": reason,
        "precision": rc.train.precision,
        "seeds": seeds,
        "diverged_seeds": [],
        "grid": rc.grid,
        "variant": rc.variant,
        **rc.twin_fields(),
        "dataset": rc.dataset,
        "test": None,
        "valid": None,
        "wall_seconds": 0.0,
        "peak_memory_bytes": None,
        "per_seed": per_seed,
        "provenance": {
            "study": study,
            "run": run,
            "scale": scale,
            "config": rc.model_dump(mode="json"),
            "parameters": None,
            "device": device,
            "hardware": devices.hardware_description(),
            "git": provenance.git_commit(),
            "packages": provenance.package_versions(),
            "python": provenance.python_version(),
            "started_at": now,
        },
        "finished_at": now,
    }
