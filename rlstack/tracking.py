"""Metrics sinks: the console (rich), a JSONL file in the run directory, wandb and TensorBoard."""

import json
import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from rlstack.config import Recipe
from rlstack.reporting import Reporter

CONSOLE_KEYS = (
    "reward/mean",
    "accuracy",
    "response_length",
    "loss",
    "rewards/margin",
    "eval/loss",
    "eval/preference_accuracy",
    "eval/greedy_accuracy",
    "eval/sampled_accuracy",
    "time/step",
    "time/train",
)

MESSAGE_KEYS = {"note": "cyan", "warning": "yellow"}
"""Text a step's record may carry, printed on its own line in this colour; the other keys are numbers."""


def wandb_mode(setting: str) -> str:
    """``auto`` is online when ``WANDB_API_KEY`` is set, otherwise offline."""
    if setting == "auto":
        return "online" if os.environ.get("WANDB_API_KEY") else "offline"
    return setting


class Tracker:
    """Writes each step's metrics to every sink; ``metrics.jsonl`` is the record the plot reads."""

    def __init__(self, recipe: Recipe, run_dir: Path, total_steps: int):
        path = run_dir / "metrics.jsonl"
        self.seq = len(path.read_text().splitlines()) if path.exists() else 0
        self.file = path.open("a")
        self.reporter = Reporter.from_env()
        self.console = Console(stderr=False) if recipe.tracking.console else None
        self.progress: Progress | None = None
        if self.console is not None:
            self.progress = Progress(
                TextColumn("[bold]step {task.completed}/{task.total}"),
                BarColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self.task = self.progress.add_task("train", total=total_steps)
            self.progress.start()
        self.tensorboard = None
        if recipe.tracking.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"))
        self.run = None
        mode = wandb_mode(recipe.tracking.wandb)
        if mode != "disabled":
            import wandb

            self.run = wandb.init(
                project=recipe.tracking.project,
                name=run_dir.name,
                dir=str(run_dir),
                mode=mode,  # type: ignore[arg-type]
                config=recipe.model_dump(mode="json"),
            )

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        record = {"step": step, "time": time.time(), **metrics}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.reporter is not None:
            self.reporter.send(self.seq, record)
        self.seq += 1
        if self.run is not None:
            self.run.log({k: v for k, v in metrics.items() if k not in MESSAGE_KEYS}, step=step)
        if self.tensorboard is not None:
            for key, value in metrics.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    self.tensorboard.add_scalar(key, value, global_step=step)
            self.tensorboard.flush()
        if self.console is not None and self.progress is not None:
            shown = "  ".join(f"{k}={metrics[k]:.3g}" for k in CONSOLE_KEYS if k in metrics)
            self.console.print(f"step {step}  {shown}")
            for key in MESSAGE_KEYS:
                if key in metrics:
                    self.console.print(f"[{MESSAGE_KEYS[key]}]{key}: {metrics[key]}[/]", highlight=False)
            self.progress.update(self.task, completed=step)

    def close(self) -> None:
        """Flush and close every sink; safe to call twice."""
        if self.file.closed:
            return
        if self.progress is not None:
            self.progress.stop()
        if self.run is not None:
            self.run.finish()
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.reporter is not None:
            self.reporter.close()
        self.file.close()


def plot_run(metrics_file: Path, target: Path) -> None:
    """PNG of the training reward and the held-out accuracies per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in [
        ("reward/mean", "train reward (sampled)"),
        ("eval/greedy_accuracy", "held-out greedy"),
        ("eval/sampled_accuracy", "held-out sampled (T=1)"),
        ("eval/preference_accuracy", "held-out preference accuracy"),
    ]:
        points = [(r["step"], r[key]) for r in records if key in r]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("reward / accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(target, dpi=100)
    plt.close(fig)
