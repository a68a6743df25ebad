"""``rlstack bench async-grpo``'s figures from a run's metrics records."""

from rlstack.bench.async_grpo import summarise
from rlstack.cli import benches


def record(step: int, seconds: float, staleness: int) -> dict:
    times = {f"time/{p}": seconds / 4 for p in ("generate", "reward", "train", "sync")}
    lags = {"staleness/mean": float(staleness), "staleness/max": staleness, "staleness/dropped_samples": 0}
    return {"step": step, "time/step": seconds, "time/trainer_wait": 0.1, "time/engine_wait": 0.2, **times, **lags}


def test_summarise_reads_step_times_staleness_and_the_first_and_last_evaluation():
    records = [
        {"step": 0, "eval/greedy_accuracy": 0.2, "eval/sampled_accuracy": 0.1},
        record(1, 2.0, 0),
        record(2, 4.0, 1),
        record(3, 6.0, 1),
        {"step": 3, "eval/greedy_accuracy": 0.6, "eval/sampled_accuracy": 0.5},
    ]
    figures = summarise(records)
    assert figures["num_steps"] == 3 and figures["median_step_s"] == 4.0
    assert figures["steps_per_s"] == round(3 / 12, 4)
    assert figures["median_train_s"] == 1.0 and figures["median_engine_wait_s"] == 0.2
    assert figures["mean_staleness"] == round(2 / 3, 3) and figures["max_staleness_seen"] == 1
    assert (figures["sampled_before"], figures["sampled_after"], figures["greedy_after"]) == (0.1, 0.5, 0.6)


def test_the_bench_is_listed_as_rlstack_bench_async_grpo():
    assert benches()["async-grpo"].startswith("GRPO on-policy (max_staleness=0) against one step off")
