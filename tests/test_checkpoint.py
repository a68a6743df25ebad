"""Checkpoints at fsspec URIs: written through a local staging directory, read back through a local copy."""

import json

import fsspec
import pytest

from rlstack.checkpoint import CONTROLLER_STATE, check_resumable, load_controller_state, readable, writable

URI = "memory://bucket/runs/a/step_2"


@pytest.fixture
def remote():
    yield fsspec.filesystem("memory")
    fsspec.filesystem("memory").rm("/bucket", recursive=True)


def write_checkpoint(uri: str) -> None:
    with writable(uri) as target:
        assert target.is_dir() and not str(target).startswith("memory")
        (target / "config.json").write_text("{}")
        (target / "trainer_state.pt").write_bytes(b"state")
        (target / CONTROLLER_STATE).write_text(json.dumps({"step": 2}))


def test_a_checkpoint_written_locally_is_uploaded_and_read_back(remote):
    write_checkpoint(URI)
    assert sorted(p.rsplit("/", 1)[-1] for p in remote.ls("/bucket/runs/a/step_2", detail=False)) == [
        "config.json",
        CONTROLLER_STATE,
        "trainer_state.pt",
    ]
    check_resumable(URI)
    assert load_controller_state(URI) == {"step": 2}
    with readable(URI) as local:
        assert (local / "trainer_state.pt").read_bytes() == b"state"
    assert not local.exists()  # the downloaded copy is removed


def test_an_incomplete_remote_checkpoint_is_refused_by_name(remote):
    remote.pipe("/bucket/runs/a/step_2/config.json", b"{}")
    with pytest.raises(ValueError, match=r"resume_from='memory://bucket/runs/a/step_2'.*trainer_state.pt"):
        check_resumable(URI)


def test_a_local_uri_is_written_in_place(tmp_path):
    write_checkpoint(str(tmp_path / "step_2"))
    check_resumable(f"file://{tmp_path}/step_2")
    with readable(str(tmp_path / "step_2")) as local:
        assert local == tmp_path / "step_2"


@pytest.mark.parametrize("optimizer", [True, False])
def test_optimizer_state_resumes_only_on_the_backend_that_wrote_it(remote, optimizer):
    """A checkpoint's own recipe says which backend wrote its optimizer state; weights alone resume anywhere."""
    write_checkpoint(URI)
    with fsspec.open(f"{URI}/recipe.yaml", "w") as file:
        file.write(f"trainer:\n  backend: fsdp2\ncheckpoint:\n  optimizer: {str(optimizer).lower()}\n")
    check_resumable(URI, "fsdp2")
    if optimizer:
        with pytest.raises(ValueError, match="trainer.backend='fsdp2', not 'deepspeed'.*rlstack export"):
            check_resumable(URI, "deepspeed")
    else:
        check_resumable(URI, "deepspeed")
