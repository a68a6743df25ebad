"""SFT and DPO on the same trainer group as GRPO: real Ray, two FSDP2 ranks, a tiny random model."""

import json

import pytest

from rlstack.config import load_recipe
from rlstack.dpo import DPOController
from rlstack.sft import SFTController
from tests.engines import fingerprints

pytestmark = pytest.mark.e2e

COMMON = [
    "algorithm.beta=0.5",
    "trainer.num_steps=3",
    "trainer.lr=1e-3",
    "algorithm.batch_size=8",
    "data.num_eval=6",
    "rollout.max_new_tokens=4",
    "rollout.dtype=float32",
    "eval.num_samples=1",
    "tracking.wandb=disabled",
]


def records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_sft_lowers_held_out_loss_and_reports_task_accuracy(ray_cluster, tmp_path, request):
    recipe = load_recipe(
        request.config.rootpath / "recipes/grpo_tiny_random.yaml",
        ["algorithm.name=sft", "algorithm.kl_coef=0", *COMMON],
    )
    with SFTController(recipe, tmp_path / "run") as controller:
        initial = controller.trainer.fingerprint()
        summary = controller.run()
        trained = controller.trainer.fingerprint()
    assert summary["loss_after"] < summary["loss_before"]
    assert 0.0 <= summary["greedy_accuracy_after"] <= 1.0 and summary["policy_version"] == 3
    assert any(trained[name] != initial[name] for name in initial)
    steps = [r for r in records(tmp_path / "run") if "num_tokens" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert all(r["num_tokens"] > 0 and r["grad_norm"] > 0 for r in steps)
    assert (tmp_path / "run/checkpoints/step_3/model.safetensors").is_file()


@pytest.mark.parametrize(
    ("reference", "loss", "first_loss"),
    [
        pytest.param("precomputed", "sigmoid", 0.6931, marks=pytest.mark.slow),  # -log sigmoid(0)
        ("online", "sigmoid", 0.6931),
        pytest.param("precomputed", "ipo", 1.0, marks=pytest.mark.slow),  # (0 - 1 / (2 * 0.5))^2
    ],
)
def test_dpo_raises_the_chosen_margin(ray_cluster, tmp_path, request, reference, loss, first_loss):
    recipe = load_recipe(
        request.config.rootpath / "recipes/grpo_tiny_random.yaml",
        [f"algorithm.reference={reference}", f"algorithm.dpo_loss={loss}", "algorithm.name=dpo", *COMMON],
    )
    with DPOController(recipe, tmp_path / "run") as controller:
        summary = controller.run()
    first = records(tmp_path / "run")[0]
    assert first["eval/rewards/margin"] == pytest.approx(0.0, abs=1e-4)  # the policy starts as the reference
    assert first["eval/loss"] == pytest.approx(first_loss, abs=1e-4)  # the policy starts as the reference
    steps = [r for r in records(tmp_path / "run") if "rewards/accuracy" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert steps[0]["loss"] == pytest.approx(first_loss, abs=1e-3)
    assert steps[-1]["rewards/margin"] > 0 and steps[-1]["loss"] < steps[0]["loss"]  # fresh pairs each step
    assert summary["policy_version"] == 3 and "preference_accuracy_after" in summary


@pytest.mark.slow
def test_an_sft_checkpoint_is_the_starting_model_of_dpo(ray_cluster, tmp_path, request):
    tiny = request.config.rootpath / "recipes/grpo_tiny_random.yaml"
    sft = load_recipe(tiny, ["algorithm.name=sft", *COMMON, "trainer.num_steps=1", "eval.every_steps=0"])
    with SFTController(sft, tmp_path / "sft") as controller:
        summary = controller.run()
        trained = controller.trainer.fingerprint()
    dpo = load_recipe(tiny, ["algorithm.name=dpo", *COMMON, f"model.path={summary['checkpoint']}"])
    with DPOController(dpo, tmp_path / "dpo") as controller:
        assert controller.trainer.fingerprint() == trained
        assert fingerprints(controller.rollout)[0] == pytest.approx(trained)
