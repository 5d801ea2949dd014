"""Loss curves: people would rather look than read."""

from __future__ import annotations

import json
from pathlib import Path


def plot_metrics(metrics_jsonl: str | Path, out_png: str | Path, *, title: str = "training loss") -> Path | None:
    """One loss-vs-step line per stage (and per `loss_*` source key) from `metrics.jsonl`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, tuple[list, list]] = {}
    for line in Path(metrics_jsonl).read_text().splitlines():
        entry = json.loads(line)
        for key, value in entry.items():
            if key == "loss" or key.startswith("loss_"):
                xs, ys = series.setdefault(f"{entry.get('stage', '')} {key}".strip(), ([], []))
                xs.append(entry["step"])
                ys.append(value)
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="." if len(xs) < 50 else None, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)
