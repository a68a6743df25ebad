"""Held-out accuracy of a tool recipe's model before training, with and without its tool

Runs the recipe's engine and environment in this process (no Ray): greedy and sampled (T=1,
``eval.num_samples`` per prompt) accuracy of the first reward on the held-out prompts, once
as single completions of the plain prompt (no tool) and once as trajectories of the turn
loop with the environment, and how often the model called the tool. Then, unless
``--no-train``, it trains the recipe (``rlstack train``, a local Ray) and records the run's
held-out accuracy with the tool before and after, and its wall time.
"""

import argparse
import json
import time
from pathlib import Path
from typing import Any

from reward.api import to_score
from reward.loader import instantiate, resolve
from rlstack import models
from rlstack.bench.result import record_result
from rlstack.config import load_recipe
from rlstack.data.chat import render_prompt
from rlstack.data.dataset import load_prompt_data
from rlstack.types import SamplingParams
from rollout.multi_turn import TurnLoop, single_turn, trajectory_metrics
from rollout.registry import make_engine

RECIPE = "recipes/grpo_tool_calc_smollm2.yaml"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=RECIPE)
    parser.add_argument("overrides", nargs="*", help="recipe overrides, e.g. 'rollout.environment.kwargs={}'")
    parser.add_argument("--num-eval", type=int, default=None, help="held-out prompts (default: the recipe's)")
    parser.add_argument("--output", type=Path, default=Path("docs/results/tool_calc_smollm2_cpu.json"))
    parser.add_argument("--no-train", action="store_true", help="measure the untrained model only")
    args = parser.parse_args(argv)
    overrides = [*args.overrides, *([f"data.num_eval={args.num_eval}"] if args.num_eval else [])]
    recipe = load_recipe(args.recipe, overrides)
    assert recipe.rollout.environment is not None, "the recipe names no rollout.environment"
    from actors.environment import EnvironmentWorker

    tokenizer = models.load_tokenizer(recipe.model.path)
    prompts = list(load_prompt_data(recipe.data, tokenizer).held_out_prompts)
    engine = make_engine(recipe)
    engine.load_weights(0, [dict(models.load_model(recipe.model.path).named_parameters())])
    environment = EnvironmentWorker(recipe.rollout.environment)
    first = recipe.reward.functions[0]
    reward = instantiate(resolve(first.fn, "reward.functions.0.fn"), first.kwargs)
    rollout = recipe.rollout
    loop = TurnLoop(engine.generate, environment, tokenizer, rollout.max_turns, rollout.max_trajectory_tokens)
    stop = tuple(rollout.stop)
    settings = {
        "greedy": SamplingParams(n=1, max_new_tokens=rollout.max_new_tokens, temperature=0.0, stop=stop),
        "sampled": SamplingParams(n=recipe.eval.num_samples, max_new_tokens=rollout.max_new_tokens, seed=0, stop=stop),
    }
    figures: dict[str, Any] = {"recipe": args.recipe, "num_prompts": len(prompts)}
    for name, params in settings.items():
        ids = [render_prompt(tokenizer, p.messages, recipe.data.system_prompt) for p in prompts]
        plain = single_turn(ids, engine.generate(ids, params))
        with_tool = loop.run(prompts, params)
        for label, groups in (("no_tool", plain), ("tool", with_tool)):
            scores = [to_score(reward(t.answer, prompt=p.question, **p.fields))[0] for p, g in zip(prompts, groups,
                      strict=True) for t in g]  # fmt: skip
            figures[f"{name}_accuracy_{label}"] = sum(s >= 1.0 for s in scores) / len(scores)
        metrics = trajectory_metrics(with_tool)
        figures[f"{name}_tool_calls_per_trajectory"] = metrics.get("env/tool_calls", 0.0)
        figures[f"{name}_turns_per_trajectory"] = metrics["trajectory/turns"]
        figures[f"{name}_example"] = with_tool[0][0].completion.text
    targets: dict[str, bool] = {}
    record_result("tool-calc", figures, targets, args.output)  # the baseline stays written if training is cut short
    if not args.no_train:
        figures.update(train(args.recipe, args.overrides))
        gain = figures["trained_sampled_accuracy_after"] - figures["sampled_accuracy_no_tool"]
        targets["sampled_accuracy_30_points_above_no_tool"] = gain >= 0.30
        targets["trained_within_30_minutes"] = figures["train_wall_s"] <= 1800
        record_result("tool-calc", figures, targets, args.output)


def train(recipe: str, overrides: list[str]) -> dict[str, Any]:
    """Train ``recipe`` with ``rlstack train`` and return its summary's held-out accuracies and wall time."""
    from rlstack.train import main as train_main

    name = f"bench-tool-calc-{time.strftime('%Y%m%d-%H%M%S')}"
    start = time.time()
    assert train_main([recipe, *overrides, f"tracking.name={name}", "tracking.wandb=disabled"]) == 0
    summary = json.loads((Path("runs") / name / "summary.json").read_text())
    return {
        "train_wall_s": round(time.time() - start, 1),
        "train_run_dir": summary["run_dir"],
        **{f"trained_{key}": summary[key] for key in summary if key.endswith(("_before", "_after"))},
    }


if __name__ == "__main__":
    main()
