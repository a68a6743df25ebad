"""Checkpoints: staged and committed with a manifest written last, refused when torn, pruned to the newest."""

import json
from pathlib import Path

import fsspec
import pytest

from rlstack.checkpoint import (
    CONTROLLER_STATE,
    MANIFEST,
    begin,
    check_resumable,
    checkpoint_base,
    commit,
    latest_checkpoint,
    load_controller_state,
    manifest_of,
    prune,
    readable,
    staging_uri,
    writable,
)
from rlstack.config import load_recipe

URI = "memory://bucket/runs/a/step_2"
PARTS = {
    "config.json": b"{}",
    "recipe.yaml": b"trainer:\n  backend: fsdp2\n",
    "trainer_state.pt": b"state",
    "model.safetensors": b"weights" * 10,
}


@pytest.fixture
def remote():
    yield fsspec.filesystem("memory")
    fsspec.filesystem("memory").rm("/bucket", recursive=True)


def write_checkpoint(uri: str, step: int = 2, parts: dict[str, bytes] = PARTS) -> None:
    """What ``TrainerGroup.save`` does, in one process: stage, then commit."""
    staging = staging_uri(uri)
    begin(staging)
    with writable(staging) as target:
        assert target.is_dir() and not str(target).startswith("memory")
        for name, data in parts.items():
            (target / name).write_bytes(data)
        (target / CONTROLLER_STATE).write_text(json.dumps({"step": step}))
        written = manifest_of(target)
    commit(uri, staging, written)


def test_a_checkpoint_written_locally_is_uploaded_with_its_manifest_and_read_back(remote):
    write_checkpoint(URI)
    names = sorted(p.rsplit("/", 1)[-1] for p in remote.ls("/bucket/runs/a/step_2", detail=False))
    assert names == sorted([*PARTS, CONTROLLER_STATE, MANIFEST])
    manifest = json.loads(remote.cat("/bucket/runs/a/step_2/manifest.json"))["files"]
    assert manifest["trainer_state.pt"]["bytes"] == 5 and len(manifest["trainer_state.pt"]["sha256"]) == 64
    check_resumable(URI)
    assert load_controller_state(URI) == {"step": 2}
    with readable(URI, verify=True) as local:
        assert (local / "trainer_state.pt").read_bytes() == b"state"
    assert not local.exists()  # the downloaded copy is removed


def test_a_local_checkpoint_appears_only_when_committed(tmp_path):
    final = tmp_path / "step_2"
    staging = staging_uri(str(final))
    with writable(staging) as target:
        for name, data in PARTS.items():
            (target / name).write_bytes(data)
        (target / CONTROLLER_STATE).write_text("{}")
    assert not final.exists() and [p.name for p in tmp_path.iterdir()] == [target.name]
    assert target.name.startswith(".step_2.partial-")
    commit(str(final), staging, {})
    assert [p.name for p in tmp_path.iterdir()] == ["step_2"]
    check_resumable(f"file://{final}")
    with readable(str(final)) as local:
        assert local == final


def test_a_second_commit_of_a_step_replaces_the_first_and_removes_dead_writers_staging(tmp_path):
    write_checkpoint(str(tmp_path / "step_2"), parts={**PARTS, "trainer_state.pt": b"first"})
    (tmp_path / ".step_2.partial-deadwriter").mkdir()  # a writer that died mid-checkpoint
    write_checkpoint(str(tmp_path / "step_2"))
    assert [p.name for p in tmp_path.iterdir()] == ["step_2"]
    assert (tmp_path / "step_2/trainer_state.pt").read_bytes() == b"state"
    check_resumable(str(tmp_path / "step_2"))


def test_a_remote_checkpoint_without_its_manifest_is_refused_as_never_completed(remote):
    write_checkpoint(URI)
    remote.rm("/bucket/runs/a/step_2/manifest.json")
    with pytest.raises(ValueError, match=r"resume_from='memory://bucket/runs/a/step_2'.*no manifest.json.*never"):
        check_resumable(URI)


def test_a_rewrite_of_a_remote_checkpoint_is_incomplete_until_its_manifest_lands(remote):
    write_checkpoint(URI)
    begin(URI)
    with pytest.raises(ValueError, match="no manifest.json"):
        check_resumable(URI)


@pytest.mark.parametrize("missing", ["model.safetensors", "trainer_state.pt", "config.json", "recipe.yaml"])
def test_a_checkpoint_missing_a_part_is_refused_naming_it(tmp_path, missing):
    write_checkpoint(str(tmp_path / "step_2"), parts={k: v for k, v in PARTS.items() if k != missing})
    with pytest.raises(ValueError, match=rf"is not an rlstack checkpoint: no {missing}$"):
        check_resumable(str(tmp_path / "step_2"))


def test_a_truncated_or_deleted_file_is_refused_as_torn_before_anything_loads(tmp_path):
    write_checkpoint(str(tmp_path / "step_2"))
    (tmp_path / "step_2/model.safetensors").write_bytes(b"weights")
    with pytest.raises(ValueError, match="is torn: model.safetensors holds 7 bytes, its manifest says 70"):
        check_resumable(str(tmp_path / "step_2"))
    (tmp_path / "step_2/model.safetensors").unlink()
    with pytest.raises(ValueError, match="is torn: model.safetensors listed in its manifest but absent"):
        check_resumable(str(tmp_path / "step_2"))


def test_a_same_size_corruption_is_caught_by_the_checksum_when_read(tmp_path):
    write_checkpoint(str(tmp_path / "step_2"))
    (tmp_path / "step_2/trainer_state.pt").write_bytes(b"STATE")
    check_resumable(str(tmp_path / "step_2"))  # sizes only
    corrupt = "is corrupt: trainer_state.pt is not the file its manifest lists"
    with pytest.raises(ValueError, match=corrupt), readable(str(tmp_path / "step_2"), verify=True):
        pass


def test_the_latest_complete_checkpoint_is_found_and_old_ones_pruned(tmp_path):
    for step in (1, 2, 3, 10):
        write_checkpoint(str(tmp_path / f"step_{step}"), step)
    (tmp_path / "step_11").mkdir()  # never completed
    assert latest_checkpoint(str(tmp_path)) == f"{tmp_path}/step_10"
    assert prune(str(tmp_path), 2) == [f"{tmp_path}/step_1", f"{tmp_path}/step_2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_10", "step_11", "step_3"]
    assert latest_checkpoint(str(tmp_path / "none")) is None


@pytest.mark.parametrize("optimizer", [True, False])
def test_optimizer_state_resumes_only_on_the_backend_that_wrote_it(remote, optimizer):
    """A checkpoint's own recipe says which backend wrote its optimizer state; weights alone resume anywhere."""
    recipe = f"trainer:\n  backend: fsdp2\ncheckpoint:\n  optimizer: {str(optimizer).lower()}\n".encode()
    write_checkpoint(URI, parts={**PARTS, "recipe.yaml": recipe})
    check_resumable(URI, "fsdp2")
    if optimizer:
        with pytest.raises(ValueError, match="trainer.backend='fsdp2', not 'deepspeed'.*rlstack export"):
            check_resumable(URI, "deepspeed")
    else:
        check_resumable(URI, "deepspeed")


def test_a_relative_run_directory_gives_absolute_checkpoint_paths_and_a_uri_stays_as_given(tmp_path, monkeypatch):
    """The trainer's ranks write checkpoints from Ray's working directory, where a relative path means elsewhere."""
    tiny = Path(__file__).parents[1] / "recipes/grpo_tiny_random.yaml"
    monkeypatch.chdir(tmp_path)
    assert checkpoint_base(load_recipe(tiny), Path("runs/a")) == str(tmp_path / "runs/a/checkpoints")
    remote = load_recipe(tiny, ["checkpoint.uri=memory://bucket/ckpt/"])
    assert checkpoint_base(remote, Path("runs/a")) == "memory://bucket/ckpt"
