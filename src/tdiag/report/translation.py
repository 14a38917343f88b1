"""Figures and tables of the translation report page (notebooks/wmt14.ipynb calls these)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from tdiag import paths
from tdiag.data import bpe, wmt14
from tdiag.report import collect, tables
from tdiag.train.metrics import text_scores

SPLIT_ORDER = ["train", "valid"]

PUBLISHED = pd.DataFrame(
    [
        {
            "system": "Transformer (base), Vaswani et al. 2017, table 2",
            "test set": "newstest2014 en-fr (3,003 sentences)",
            "training data": "WMT14 en-fr, 36M sentence pairs",
            "subwords": "32,000 word-pieces",
            "model": "6 + 6 layers, d_model 512, 8 heads",
            "training": "100,000 steps on 8 P100 GPUs (12 hours)",
            "decoding": "beam 4, length penalty 0.6, average of the last 5 checkpoints",
            "BLEU": 38.1,
            "BLEU kind": "tokenized BLEU as reported in the paper, not sacreBLEU",
        },
        {
            "system": "Transformer (big), Vaswani et al. 2017, table 2",
            "test set": "newstest2014 en-fr (3,003 sentences)",
            "training data": "WMT14 en-fr, 36M sentence pairs",
            "subwords": "32,000 word-pieces",
            "model": "6 + 6 layers, d_model 1024, 16 heads",
            "training": "300,000 steps on 8 P100 GPUs (3.5 days)",
            "decoding": "beam 4, length penalty 0.6, average of the last 20 checkpoints",
            "BLEU": 41.8,
            "BLEU kind": "tokenized BLEU as reported in the paper, not sacreBLEU",
        },
    ]
).set_index("system")


def published_results() -> pd.DataFrame:
    """Published WMT14 en-fr results (Vaswani et al. 2017, section 6.1 and table 2), for
    context only: different training data (36M pairs, not ~1k), test set (all of
    newstest2014, not a 64-sentence subset), model size, training time and BLEU (tokenized,
    not sacreBLEU's 13a on detokenised text); not comparable."""
    return PUBLISHED


def _seed_summaries(root: Path, study: str) -> list[tuple[dict, dict]]:
    """(run summary, seed summary) of every finished run of the study."""
    return [(run, seed) for run in collect.finished_runs(Path(root), study) for seed in run["per_seed"]]


def bleu_ceiling(root: str | Path, dataset: str, split: str) -> float:
    """BLEU of the references' own subword ids, BPE undone and detokenised, against the
    raw references: what a model that reproduces every target exactly would score (Moses
    punctuation normalisation, e.g. of quotes, is not undone)."""
    folder = Path(root) / paths.prepared_dir(dataset)
    meta = json.loads((folder / "meta.json").read_text())
    tokens, lang = meta["tgt_tokens"], meta["text"]["target_lang"]
    records = [json.loads(line) for line in (folder / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
    exact = [wmt14.detokenize(bpe.undo(" ".join(tokens[i] for i in r["tgt"][1:-1])), lang) for r in records]
    return text_scores(exact, [r["tgt_text"] for r in records])["bleu"]


def final_scores(root: str | Path, study: str) -> pd.DataFrame:
    """Per run, seed and split: BLEU and chrF of the final model over the whole split,
    with sacreBLEU's signatures (so the numbers can be reproduced and compared), beside
    the split's BLEU ceiling (`bleu_ceiling`)."""
    rows, ceilings = [], {}
    for run, seed in _seed_summaries(Path(root), study):
        if seed["status"] != "completed":
            rows.append({"run": run["run"], "seed": seed["seed"], "split": "-", "status": seed["status"]})
            continue
        for split in ("train", "valid", "test"):
            result = seed.get(split)
            if not result:
                continue
            key = (run["dataset"], split)
            if key not in ceilings:
                ceilings[key] = bleu_ceiling(root, *key)
            rows.append({
                "run": run["run"],
                "seed": seed["seed"],
                "split": split,
                "sentences": result["decoded_examples"],
                "BLEU": round(result["bleu"], 2),
                "BLEU ceiling": round(ceilings[key], 2),
                "chrF": round(result["chrf"], 2),
                "loss": round(result["loss"], 3),
                "token accuracy": round(result["token_accuracy"], 4),
                "steps": seed["steps"],
                "wall time (s)": round(seed["wall_seconds"], 1),
                "BLEU signature": result["bleu_signature"],
                "chrF signature": result["chrf_signature"],
            })
    return pd.DataFrame(rows).set_index(["run", "seed", "split"])


def learning_curves(metrics: pd.DataFrame, title: str = ""):
    """Loss, BLEU and chrF against step for the training subset and the validation subset.

    Loss: the per-step training loss (thin line) and the teacher-forced loss of the
    evaluations; evaluations cover the first `eval_examples` pairs of each split (the
    legend says how many).
    """
    evals = metrics[metrics["kind"] == "eval"].copy()
    decoded = evals.groupby("split")["decoded_examples"].max()
    labels = {split: f"{split} (first {int(decoded[split])} pairs)" for split in SPLIT_ORDER if split in decoded}
    evals["split"] = pd.Categorical(evals["split"].map(labels), list(labels.values()))
    train = metrics[metrics["kind"] == "train"]
    style = "run" if metrics["run"].nunique() > 1 else None
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    ax = axes[0]
    sns.lineplot(data=train, x="step", y="loss", style=style, color="0.7", linewidth=0.8, ax=ax, label="training batches")
    sns.lineplot(data=evals, x="step", y="loss", hue="split", style=style, marker="o", ax=ax)
    ax.set_yscale("log")
    ax.set_title("loss (per target token)")
    ax.set_ylabel("loss (nats per target token)")
    for ax, metric, name in ((axes[1], "bleu", "BLEU"), (axes[2], "chrf", "chrF")):
        sns.lineplot(data=evals, x="step", y=metric, hue="split", style=style, marker="o", ax=ax)
        ax.set_ylim(0, 100)
        ax.set_ylabel(name)
        ax.set_title(f"{name} of decodes (sacreBLEU)")
    for ax in axes:
        ax.set_xlabel("optimizer step")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def samples(root: str | Path, study: str, split: str, n: int = 5) -> tables.Samples:
    """The first `n` sample translations of `split` stored by each run's first seed, the
    hypothesis's words that differ from the reference marked."""
    columns = ["run", "source", "reference", "hypothesis"]
    stored = collect.load_samples(root, study)
    chosen = (stored[stored["split"] == split].groupby("run", sort=False).head(n) if not stored.empty
              else pd.DataFrame(columns=columns))
    return tables.samples(chosen, labels=["run"])


def data_card(root: str | Path, dataset: str) -> pd.DataFrame:
    """The dataset's card (corpus, origin, sizes, BPE merges, vocabulary) as a two-column table."""
    meta = json.loads((Path(root) / paths.prepared_meta(dataset)).read_text())
    card = meta["card"]
    source = card["sources"][0]
    origin = source["origin"] + (f" ({source['mirror']})" if source.get("mirror") else "")
    rows = {
        "corpus": f"{source['title']}; {source['url']}",
        "fetched from": origin,
        "language pair": card["language_pair"],
        "training pairs from": card["training_pairs_from"],
        "held-out pairs from": card["held_out_pairs_from"],
        "subset seed": card["subset_seed"],
        "pairs (train / valid / test)": " / ".join(str(card["sizes"][s]) for s in paths.SPLITS),
        "long training pairs dropped": f"{card['dropped_long_pairs']['train']} (longer than {card['max_tokens']} subwords)",
        "tokenizer": card["tokenizer"],
        "BPE": card["bpe"],
        "BPE merges": card["bpe_merges"],
        "vocabulary": card["vocabulary"],
        "vocabulary size": f"{card['vocabulary_size']} (incl. {len(card['special_tokens'])} special tokens)",
        "subword tokens (train / valid / test, target side)": " / ".join(
            str(card["subword_tokens"][s]["tgt"]) for s in paths.SPLITS
        ),
        "unknown subwords (train / valid / test)": " / ".join(str(card["unknown_tokens"][s]) for s in paths.SPLITS),
        "license": source["license"],
        "cite": source["citation"],
    }
    return pd.DataFrame({"value": list(rows.values())}, index=pd.Index(list(rows), name="field"))
