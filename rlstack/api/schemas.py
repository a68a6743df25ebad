"""Request and response bodies of the run service."""

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rlstack.config import Recipe
from rlstack.samples import LoggedSample

Status = Literal["pending", "running", "succeeded", "failed", "stopped"]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class RunRequest(Body):
    """A recipe as JSON, or a shipped recipe's name; overrides apply to either."""

    recipe: Recipe | None = None
    """The recipe, in the schema of the YAML files."""
    recipe_name: str | None = Field(default=None, max_length=200)
    """A shipped recipe, e.g. ``grpo_tiny_random`` (see ``GET /v1/recipes``)."""
    overrides: list[str] = Field(default=[], max_length=100)
    """``a.b.c=value`` overrides, as on the command line."""


class RunCreated(Body):
    id: str
    """The run id, also the Ray job's submission id."""
    status: Status


class RunView(Body):
    id: str
    name: str
    status: Status
    job_id: str
    run_dir: str
    step: int
    """The last step with metrics; -1 before the first."""
    latest: dict[str, Any]
    """The latest value of every metric logged so far."""
    recipe: dict[str, Any]
    created_at: float
    started_at: float | None
    ended_at: float | None
    message: str | None
    """Ray's message about the job, e.g. why it failed."""
    adopted: bool
    """Started outside the service and adopted from its run directory."""


class RunPage(Body):
    runs: list[RunView]
    total: int
    offset: int
    limit: int


class MetricPoint(Body):
    seq: int
    """Line number in the run's ``metrics.jsonl``."""
    step: int
    time: float
    """When the controller logged it (Unix seconds)."""
    values: dict[str, Any]


class ReportedRecord(BaseModel):
    """One line of ``metrics.jsonl``: its step and time, and any metrics."""

    model_config = ConfigDict(extra="allow")
    step: int = Field(ge=-1, le=10**9)
    time: float = Field(ge=0, le=10**11)


class Report(Body):
    """Metric records a running controller sends, with their ``metrics.jsonl`` line numbers."""

    records: list[tuple[Annotated[int, Field(ge=0, le=10**9)], ReportedRecord]] = Field(max_length=1000)

    @model_validator(mode="after")
    def _utf8(self) -> "Report":
        try:
            json.dumps([r.model_dump() for _, r in self.records], ensure_ascii=False).encode()
        except UnicodeEncodeError as exc:
            raise ValueError(f"metric records must be valid UTF-8 text: {exc.reason}") from None
        return self


class AdoptRequest(Body):
    """A run started with plain ``ray job submit``: its job id and run directory."""

    job_id: str = Field(pattern=r"^[\w.:-]{1,100}$")
    run_dir: str = Field(max_length=1000)


class Checkpoint(Body):
    step: int
    path: str
    files: list[str]


class RecipeInfo(Body):
    name: str
    path: str
    description: str
    """The recipe's opening comment."""


class SamplePage(Body):
    """The rollouts a GRPO run kept at one step (``tracking.num_logged_samples`` groups of it)."""

    steps: list[int]
    """Every step with kept samples, oldest first."""
    step: int | None
    """The step shown: the one asked for, else the latest; ``None`` while no step has kept any."""
    samples: list[LoggedSample]
    """Its samples, in group order."""


class RunRecipe(Body):
    recipe: dict[str, Any]
    """The validated recipe, with every ``auto`` resolved as the run resolved it."""
    source: Literal["run_dir", "service"]
    """``run_dir``: the ``recipe.yaml`` the run wrote; ``service``: as validated at submission, until the run has
    written its own."""


class RunFile(Body):
    path: str
    """Relative to the run directory, e.g. ``summary.json`` or ``checkpoints/step_2/model.safetensors``."""
    num_bytes: int
