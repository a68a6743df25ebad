"""Metrics sinks: the console (rich), a JSONL file in the run directory, wandb and TensorBoard."""

import json
import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from rlstack.config import Recipe
from rlstack.logs import LOGS, LogWatcher
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


def describe_run(recipe: Recipe, run_dir: Path) -> list[str]:
    """The console's opening lines: what the recipe trains, and where the run writes."""
    placement = recipe.placement
    parts = [f"trainer {recipe.trainer.backend} x{placement.num_trainer_ranks}"]
    if recipe.algorithm.name == "grpo":
        rollout = recipe.rollout
        parts.append(f"{rollout.num_prompts} prompts x {rollout.num_samples} samples a step")
        parts.append(f"engine {rollout.engine} x{placement.num_rollout_workers}")
        parts.append(f"reward {', '.join(f.metric_name for f in recipe.reward.functions)}")
    steps = f"{recipe.trainer.num_steps} step{'s' * (recipe.trainer.num_steps != 1)} on {placement.device}"
    lines = [
        f"{recipe.name}: {recipe.algorithm.name} on {recipe.model.path}, {steps}; {'; '.join(parts)}",
        f"run directory: {run_dir}",
    ]
    if recipe.tracking.console == "quiet":
        lines.append(f"library logs (engine, Ray workers, trainer): {run_dir / LOGS}/; --verbose shows them here")
    return lines


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
        # soft_wrap: a job's log is no terminal, and rich would wrap a step's line at 80 columns
        self.console = Console(soft_wrap=True) if recipe.tracking.console != "off" else None
        self.watcher = LogWatcher(run_dir) if recipe.tracking.console == "quiet" else None
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
                settings=wandb.Settings(silent=recipe.tracking.console != "verbose"),
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
            if metrics.get("reward/errors"):
                self.console.print(f"[yellow]warning: {reward_failures(metrics, self.watcher is not None)}[/]")
            for finding in self.watcher.new_findings() if self.watcher else []:
                self.console.print(f"[yellow]warning: {finding}[/]", highlight=False)
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


def reward_failures(metrics: dict[str, Any], quiet: bool) -> str:
    """A step's failed reward calls, by function, and where their first tracebacks are."""
    failed = {
        key.removeprefix("reward/").removesuffix("/errors"): int(value)
        for key, value in metrics.items()
        if key.startswith("reward/") and key.endswith("/errors") and key != "reward/errors" and value
    }
    where = f"{LOGS}/driver.log" if quiet else "the log above"
    counts = ", ".join(f"{name} {count}" for name, count in failed.items())
    return f"reward calls failed ({counts}) and scored reward.error_score; the first traceback of each kind: {where}"


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
