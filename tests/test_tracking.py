from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rlstack.config import parse_recipe
from rlstack.tracking import Tracker


def test_tensorboard_gets_every_numeric_metric_of_every_step(tmp_path):
    recipe = parse_recipe({"tracking": {"tensorboard": True, "wandb": "disabled", "console": False}})
    tracker = Tracker(recipe, tmp_path, total_steps=2)
    tracker.log(1, {"loss": 0.5, "reward/mean": 0.25, "warning": "step 1 trained nothing"})
    tracker.log(2, {"loss": 0.125, "reward/mean": 0.75})
    tracker.close()
    [events_dir] = [p.parent for p in (tmp_path / "tensorboard").glob("events.out.tfevents.*")]
    events = EventAccumulator(str(events_dir))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["loss", "reward/mean"]
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 0.5), (2, 0.125)]
    assert [(e.step, e.value) for e in events.Scalars("reward/mean")] == [(1, 0.25), (2, 0.75)]


def test_no_tensorboard_files_unless_asked(tmp_path):
    recipe = parse_recipe({"tracking": {"wandb": "disabled", "console": False}})
    Tracker(recipe, tmp_path, total_steps=1).close()
    assert not (tmp_path / "tensorboard").exists()
