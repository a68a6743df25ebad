"""Entry point: ``python -m rlstack.train RECIPE [key.path=value ...]``.

Works as the entrypoint of ``ray job submit`` (it joins the job's cluster) and on its own
(it starts a local Ray, which ``rlstack.watchdog`` stops should the driver be killed). Bad input
exits with code 2 before any actor starts.
"""

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlstack import models
from rlstack.checkpoint import continued
from rlstack.config import Recipe, RecipeError, load_recipe
from rlstack.logs import DriverLogs
from rlstack.preflight import check_cluster, preflight
from rlstack.tracking import describe_run
from rlstack.watchdog import Watchdog, head_processes

if TYPE_CHECKING:
    from rlstack.controller import Controller

LOCAL_OBJECT_STORE_BYTES = 2 * 2**30
"""Object store of a Ray started here: room for a full weight sync of a 1 B model in bf16."""


def controller_for(recipe: Recipe) -> type["Controller"]:
    """The controller class of ``algorithm.name``."""
    from rlstack.controller import GRPOController
    from rlstack.dpo import DPOController
    from rlstack.sft import SFTController

    return {"grpo": GRPOController, "sft": SFTController, "dpo": DPOController}[recipe.algorithm.name]


def run_dir_for(recipe: Recipe) -> Path:
    name = recipe.tracking.name or f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Path(recipe.tracking.run_root).expanduser().resolve() / name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlstack train", description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="path to a YAML recipe, or a recipe as inline JSON (as the run service sends)")
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. trainer.lr=2e-6")
    parser.add_argument(
        "--verbose", action="store_true", help="show the libraries' logs too (tracking.console=verbose)"
    )
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # a job's log is a pipe: show each step as it ends
    try:
        recipe = load_recipe(args.recipe, [*args.overrides, *(["tracking.console=verbose"] if args.verbose else [])])
        driver_logs = DriverLogs() if recipe.tracking.console == "quiet" else None
        run_dir = run_dir_for(recipe)
        preflight(recipe, run_dir)
        fresh = not run_dir.exists()
        if (run_dir / "metrics.jsonl").exists():
            if not recipe.checkpoint.auto_resume:
                raise RecipeError(
                    f"tracking.name: run directory {str(run_dir)!r} already holds a run; choose another name, or "
                    "set checkpoint.auto_resume=true to continue it"
                )
            recipe = continued(recipe, run_dir)
        models.resolve(recipe.model.path)  # provision the embedded model once, before actors load it
        controller_class = controller_for(recipe)
        data = controller_class.load_data(recipe.data, models.load_tokenizer(recipe.model.path))
    except (RecipeError, ValueError) as exc:
        print(f"rlstack: error: {exc}", file=sys.stderr)
        return 2

    import ray

    if recipe.tracking.console != "off":
        print("\n".join(describe_run(recipe, run_dir)))
    quiet_options: dict[str, Any] = {}
    if driver_logs is not None:  # the actors write their own files, and Ray forwards nothing of theirs
        quiet_options = {"log_to_driver": False, "runtime_env": {"env_vars": driver_logs.open(run_dir)}}
    watchdog = None
    if "RAY_ADDRESS" in os.environ:
        ray.init(**quiet_options)
    else:
        ray.init(include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES, **quiet_options)
        watchdog = Watchdog(head_processes())  # the head goes with this driver, however it ends

    def stop_ray() -> None:
        ray.shutdown()
        if watchdog is not None:
            watchdog.stand_down()

    try:
        check_cluster(recipe, ray.nodes())
    except RecipeError as exc:
        stop_ray()
        if fresh:  # the logs a quiet driver has begun
            shutil.rmtree(run_dir, ignore_errors=True)
        print(f"rlstack: error: {exc}", file=sys.stderr)
        return 2
    try:
        with controller_class(recipe, run_dir, data) as controller:
            summary = controller.run()
    finally:
        stop_ray()
    print(json.dumps({"summary": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
