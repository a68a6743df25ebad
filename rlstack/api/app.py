"""The run service's FastAPI application: routes, authentication, limits and background reconciliation."""

import asyncio
import json
import secrets
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

import swagger_ui
import yaml
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, TypeAdapter, ValidationError
from sse_starlette.sse import EventSourceResponse

from rlstack.api.cache import ResponseCache
from rlstack.api.jobs import ROOT, Jobs, RayUnavailable
from rlstack.api.middleware import BodyLimit, RequestMetrics
from rlstack.api.schemas import (
    AdoptRequest,
    Checkpoint,
    MetricPoint,
    RecipeInfo,
    Report,
    RunCreated,
    RunFile,
    RunPage,
    RunRecipe,
    RunRequest,
    RunView,
    SamplePage,
    Status,
)
from rlstack.api.store import STATUSES, TERMINAL, RunRecord, Store
from rlstack.config import Recipe, RecipeError, apply_override, describe_error, load_yaml
from rlstack.reporting import ENV_RUN, ENV_TOKEN, ENV_URL
from rlstack.samples import SAMPLES_FILE, read_samples

RECIPES = ROOT / "recipes"
PAGE = Path(__file__).parent / "static" / "index.html"
SWAGGER_FILES = Path(swagger_ui.__file__).parent / "static"
EVENT_POLL_S = 0.2
RETRY_AFTER_S = 2
"""The ``Retry-After`` of a 503 while Ray is not ready."""
MetricPoints = TypeAdapter(list[MetricPoint])


@dataclass(frozen=True)
class Settings:
    token: str
    """Bearer token that every route but ``/health`` requires."""
    db_url: str
    """SQLAlchemy URL of the run store."""
    ray_address: str
    """The Ray dashboard, where jobs are submitted."""
    runs_dir: Path
    """Where runs launched here write their run directories."""
    public_url: str
    """How a job reaches this service to report metrics."""
    max_body_bytes: int = 1_000_000
    """Larger request bodies get 413."""
    reconcile_s: float = 2.0
    """How often run status is reconciled with Ray and adopted runs' files are read."""
    ready_timeout_s: float = 120.0
    """How long the service waits at start-up for Ray's job agent to take submissions."""
    submit_timeout_s: float = 60.0
    """How long a submission that Ray refuses for now is retried before the client gets 503."""


def recipe_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """Each bad field's path in the recipe and the reason, with a suggestion for a misspelt key."""
    return [{"loc": ["recipe", *e["loc"]], "msg": describe_error(e), "type": e["type"]} for e in exc.errors()]


def view(run: RunRecord) -> RunView:
    return RunView(
        id=run.id, name=run.name, status=run.status, job_id=run.job_id, run_dir=run.run_dir, step=run.step,  # type: ignore[arg-type]
        latest=run.latest or {}, recipe=run.recipe, created_at=run.created_at, started_at=run.started_at,
        ended_at=run.ended_at, message=run.message, adopted=run.adopted,
    )  # fmt: skip


def as_json(body: BaseModel, status_code: int = 200) -> Response:
    """Pydantic's own JSON, in which a NaN metric becomes ``null`` rather than an error."""
    return Response(body.model_dump_json(), status_code=status_code, media_type="application/json")


def read_jsonl(run_dir: str) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` of every complete line of a run's ``metrics.jsonl``."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for seq, line in enumerate(path.read_text().splitlines()):
        try:
            records.append((seq, json.loads(line)))
        except json.JSONDecodeError:
            break  # a line still being written
    return records


def run_files(run_dir: str) -> dict[str, Path]:
    """The files a run's page links to, by path in the run directory: its own files (``summary.json``,
    ``recipe.yaml``, ``metrics.jsonl``, ...), ``logs/*`` and each local checkpoint's files."""
    root = Path(run_dir)
    found = [*root.glob("*"), *root.glob("logs/*"), *root.glob("checkpoints/step_*/*")]
    return {str(p.relative_to(root)): p for p in sorted(found) if p.is_file() and not p.is_symlink()}


def unavailable(detail: str) -> HTTPException:
    return HTTPException(503, detail, headers={"Retry-After": str(RETRY_AFTER_S)})


def create_app(
    settings: Settings, jobs: Jobs | None = None, on_ready_timeout: Callable[[RayUnavailable], None] | None = None
) -> FastAPI:
    """The service; until Ray's job agent takes submissions, ``/health`` and every route that needs Ray answer 503.

    ``on_ready_timeout`` is called if that has not happened within ``settings.ready_timeout_s``.
    """
    store = Store(settings.db_url)
    jobs = jobs or Jobs(settings.ray_address)
    ready = asyncio.Event()
    registry = CollectorRegistry()
    requests = Counter("rlstack_http_requests", "HTTP requests", ["method", "route", "code"], registry=registry)
    latency = Histogram("rlstack_http_seconds", "HTTP request latency", ["method", "route"], registry=registry)
    runs_gauge = Gauge("rlstack_runs", "Runs by status", ["status"], registry=registry)

    def reconcile() -> None:
        """Bring each active run's status in line with Ray's; read adopted runs' files; sweep ended runs."""
        for run in store.active():
            if run.adopted and store.add_metrics(run.id, read_jsonl(run.run_dir)):
                changed(run.id)
            status, message = jobs.status(run.job_id)
            if status != run.status:
                if status in TERMINAL:
                    store.add_metrics(run.id, read_jsonl(run.run_dir))  # whatever a report missed
                store.set_status(run.id, status, message)
                changed(run.id)

    async def reconcile_forever() -> None:
        while True:
            try:
                await asyncio.to_thread(reconcile)
            except Exception as exc:  # the loop must outlive a hiccup of Ray or the database
                print(f"rlstack serve: reconcile failed: {exc!r}", flush=True)
            await asyncio.sleep(settings.reconcile_s)

    def say(line: str) -> None:
        print(f"rlstack serve: {line}", flush=True)

    async def start() -> None:
        """Wait for Ray's job agent, then reconcile forever."""
        begin = time.perf_counter()
        try:
            await asyncio.to_thread(jobs.wait_until_ready, settings.ready_timeout_s, say)
        except RayUnavailable as exc:
            print(
                f"rlstack serve: error: Ray's job agent at {jobs.address} took no submission within "
                f"{settings.ready_timeout_s:g} s: {exc}",
                file=sys.stderr,
                flush=True,
            )
            if on_ready_timeout is not None:
                on_ready_timeout(exc)
            return
        say(f"ready: Ray's job agent at {jobs.address} takes submissions ({time.perf_counter() - begin:.1f} s)")
        ready.set()
        await reconcile_forever()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(start())
        yield
        task.cancel()

    app = FastAPI(
        title="rlstack run service",
        version="1",
        description="Launch, monitor and manage rlstack training runs as Ray jobs.",
        lifespan=lifespan,
        docs_url=None,  # served below, behind the token, with Swagger UI's files from this machine
        redoc_url=None,
        openapi_url=None,
    )
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)

    @app.exception_handler(RayUnavailable)
    async def ray_unavailable(request: Request, exc: RayUnavailable) -> JSONResponse:
        """A route that needs Ray while its dashboard does not answer: 503, to be tried again."""
        detail = f"Ray's dashboard at {jobs.address} does not answer: {str(exc)[:500]}"
        return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})

    app.add_middleware(RequestMetrics, requests=requests, latency=latency)

    bearer = HTTPBearer(auto_error=False)

    async def supplied_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        token: Annotated[str | None, Query(description="The token, for clients that cannot set headers")] = None,
    ) -> str:
        return credentials.credentials if credentials is not None else (token or "")

    async def authorized(supplied: Annotated[str, Depends(supplied_token)]) -> None:
        if not secrets.compare_digest(supplied.encode(), settings.token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    auth = [Depends(authorized)]

    async def ray_ready() -> None:
        if not ready.is_set():
            raise unavailable(f"the service is starting: waiting for Ray's job agent at {jobs.address}")

    auth_ray = [*auth, Depends(ray_ready)]

    cache = ResponseCache()

    def changed(run_id: str) -> None:
        cache.drop(run_id)

    def known(run_id: str) -> RunRecord:
        run = store.get(run_id)
        if run is None:
            raise HTTPException(404, f"no run {run_id!r}")
        return run

    @app.get("/openapi.json", dependencies=auth, include_in_schema=False)
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", dependencies=auth, include_in_schema=False)
    def docs(supplied: Annotated[str, Depends(supplied_token)]) -> HTMLResponse:
        """Swagger UI; its files and the spec are fetched with the same token."""
        query = "?" + urlencode({"token": supplied})
        return get_swagger_ui_html(
            openapi_url=f"/openapi.json{query}",
            title=app.title,
            swagger_js_url=f"/docs/files/swagger-ui-bundle.js{query}",
            swagger_css_url=f"/docs/files/swagger-ui.css{query}",
            swagger_favicon_url=f"/docs/files/favicon-32x32.png{query}",
        )

    @app.get("/docs/files/{name}", dependencies=auth, include_in_schema=False)
    def docs_file(name: Literal["swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"]) -> FileResponse:
        return FileResponse(SWAGGER_FILES / name)

    @app.get("/health", responses={503: {"description": "Starting: Ray's job agent takes no submissions yet"}})
    def health() -> JSONResponse:
        """``ready`` once Ray's job agent takes submissions, ``starting`` (503) before; needs no token."""
        if ready.is_set():
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "starting"}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.get("/metrics", dependencies=auth, response_class=PlainTextResponse)
    def prometheus() -> Response:
        """Prometheus metrics: requests, latency, runs by status."""
        counts = store.counts()
        for status in STATUSES:
            runs_gauge.labels(status).set(counts.get(status, 0))
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/recipes", dependencies=auth)
    def recipes() -> list[RecipeInfo]:
        """The shipped recipes, with their opening comments."""
        result = []
        for path in sorted(RECIPES.glob("*.yaml")):
            comment = [line.removeprefix("#").strip() for line in path.read_text().splitlines() if line.startswith("#")]
            result.append(RecipeInfo(name=path.stem, path=str(path.relative_to(ROOT)), description=" ".join(comment)))
        return result

    @app.post(
        "/v1/runs",
        dependencies=auth_ray,
        status_code=201,
        responses={422: {"description": "Invalid recipe"}, 503: {"description": "Ray refused the job for now"}},
    )
    def submit(request: RunRequest) -> RunCreated:
        """Validate a recipe and start it as a Ray job; the run outlives a restart of the service."""
        if (request.recipe is None) == (request.recipe_name is None):
            raise HTTPException(422, [{"loc": ["body"], "msg": "give exactly one of 'recipe' and 'recipe_name'"}])
        if request.recipe is not None:
            tree = request.recipe.model_dump(mode="json")
        else:
            path = RECIPES / f"{request.recipe_name}.yaml"
            if not path.is_file() or path.parent != RECIPES:
                raise HTTPException(
                    422, [{"loc": ["body", "recipe_name"], "msg": f"no recipe {request.recipe_name!r}"}]
                )
            tree = load_yaml(path.read_text(), f"recipe {request.recipe_name!r}")
        run_id = uuid.uuid4().hex[:12]
        try:
            for override in request.overrides:
                apply_override(tree, override)
            tracking = tree.setdefault("tracking", {})
            if not isinstance(tracking, dict):
                raise RecipeError(f"tracking: must be a section (a mapping), not {type(tracking).__name__}")
            name = tracking.get("name") or tree.get("name", "recipe")
            tree["tracking"].update(run_root=str(settings.runs_dir.resolve()), name=run_id)
            recipe = Recipe.model_validate(tree)
        except RecipeError as exc:
            raise HTTPException(422, [{"loc": ["body", "overrides"], "msg": str(exc)}]) from None
        except ValidationError as exc:
            raise HTTPException(422, recipe_errors(exc)) from None
        report_token = secrets.token_urlsafe(24)
        env = {ENV_URL: settings.public_url, ENV_TOKEN: report_token, ENV_RUN: run_id}
        try:
            job_id = jobs.submit(run_id, recipe.model_dump(mode="json"), env, settings.submit_timeout_s)
        except RayUnavailable as exc:
            raise unavailable(f"Ray did not take the job within {settings.submit_timeout_s:g} s: {exc}") from None
        except RuntimeError as exc:
            raise HTTPException(503, f"Ray did not take the job: {exc}") from None
        store.add_run(
            RunRecord(
                id=run_id, name=str(name), status="pending", job_id=job_id,
                run_dir=str(settings.runs_dir.resolve() / run_id), recipe=recipe.model_dump(mode="json"),
                report_token=report_token, adopted=False, created_at=time.time(), step=-1, latest={},
            )
        )  # fmt: skip
        return RunCreated(id=run_id, status="pending")

    @app.post("/v1/runs/adopt", dependencies=auth_ray, status_code=201)
    def adopt(request: AdoptRequest) -> RunCreated:
        """Track a run started with plain ``ray job submit``, reading its run directory's ``metrics.jsonl``."""
        recipe_file = Path(request.run_dir) / "recipe.yaml"
        try:
            readable = recipe_file.is_file()
        except (OSError, ValueError):  # a name too long, a NUL byte
            readable = False
        if not readable:
            raise HTTPException(422, [{"loc": ["body", "run_dir"], "msg": f"{request.run_dir!r} holds no recipe.yaml"}])
        status, message = jobs.status(request.job_id)
        if message and message.startswith("Ray has no job"):
            raise HTTPException(422, [{"loc": ["body", "job_id"], "msg": message}])
        try:
            recipe = load_yaml(recipe_file.read_text(), str(recipe_file))
            if not isinstance(recipe, dict):
                raise RecipeError(f"{str(recipe_file)!r} holds a {type(recipe).__name__}, not a recipe's mapping")
        except (RecipeError, OSError, UnicodeDecodeError) as exc:
            raise HTTPException(422, [{"loc": ["body", "run_dir"], "msg": str(exc)}]) from None
        run_id = uuid.uuid4().hex[:12]
        store.add_run(
            RunRecord(
                id=run_id, name=str(recipe.get("name", "adopted")), status=status, job_id=request.job_id,
                run_dir=request.run_dir, recipe=recipe, report_token=secrets.token_urlsafe(24), adopted=True,
                created_at=time.time(), step=-1, latest={}, message=message,
            )
        )  # fmt: skip
        store.add_metrics(run_id, read_jsonl(request.run_dir))
        return RunCreated(id=run_id, status=status)  # type: ignore[arg-type]

    @app.get("/v1/runs", dependencies=auth, response_model=RunPage)
    def list_runs(
        status: Status | None = None,
        offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
    ) -> Response:
        """Runs, newest first, filtered by status and paginated."""
        runs, total = store.page(status, offset, limit)
        return as_json(RunPage(runs=[view(r) for r in runs], total=total, offset=offset, limit=limit))

    @app.get(
        "/v1/runs/{run_id}", dependencies=auth, response_model=RunView, responses={404: {"description": "Unknown run"}}
    )
    async def get_run(run_id: str) -> Response:
        """Status, step, latest metrics, config, timestamps and run directory."""
        body = cache.get(run_id, "run", lambda: view(known(run_id)).model_dump_json().encode())
        return Response(body, media_type="application/json")

    @app.get(
        "/v1/runs/{run_id}/metrics",
        dependencies=auth,
        response_model=list[MetricPoint],
        responses={404: {"description": "Unknown run"}},
    )
    async def metrics(run_id: str, since: Annotated[int, Query(ge=-1, le=10**9)] = 0) -> Response:
        """The metric records of steps ``>= since``, in the order they were logged (rendered in the event loop:
        a cache miss is one indexed query, and a hit needs no thread)."""

        def render() -> bytes:
            known(run_id)
            points = [
                MetricPoint(seq=m.seq, step=m.step, time=m.time, values=m.values) for m in store.metrics(run_id, since)
            ]
            return MetricPoints.dump_json(points)

        return Response(cache.get(run_id, f"metrics:{since}", render), media_type="application/json")

    @app.get(
        "/v1/runs/{run_id}/events",
        dependencies=auth,
        response_class=EventSourceResponse,
        responses={
            200: {
                "description": "A stream of ``status`` and ``metric`` events",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            404: {"description": "Unknown run"},
        },
    )
    async def events(run_id: str, request: Request) -> EventSourceResponse:
        """Server-Sent Events: ``status`` on every status change, ``metric`` for every new record; the stream ends
        when the run has ended and every record was sent."""
        known(run_id)

        async def stream() -> AsyncIterator[dict[str, str]]:
            sent, status = -1, None
            while not await request.is_disconnected():
                run = await asyncio.to_thread(store.get, run_id)
                assert run is not None
                for m in await asyncio.to_thread(store.metrics, run_id, -1, sent):
                    point = MetricPoint(seq=m.seq, step=m.step, time=m.time, values=m.values)
                    yield {"event": "metric", "id": str(m.seq), "data": point.model_dump_json()}
                    sent = m.seq
                if run.status != status:
                    status = run.status
                    yield {"event": "status", "data": json.dumps({"status": status, "step": run.step})}
                if status in TERMINAL:
                    return
                await asyncio.sleep(EVENT_POLL_S)

        return EventSourceResponse(stream())

    @app.get("/v1/runs/{run_id}/logs", dependencies=auth_ray, response_class=PlainTextResponse)
    def logs(run_id: str, follow: bool = False) -> Response:
        """The Ray job's logs; ``follow=true`` streams them until the job ends."""
        run = known(run_id)
        if follow:
            return StreamingResponse(jobs.follow(run.job_id), media_type="text/plain")
        return PlainTextResponse(jobs.logs(run.job_id))

    @app.post("/v1/runs/{run_id}/cancel", dependencies=auth_ray, status_code=202, response_model=RunView)
    def cancel(run_id: str) -> Response:
        """Ask Ray to stop the run's job; idempotent, and a no-op on an ended run."""
        run = known(run_id)
        if run.status not in TERMINAL:
            jobs.stop(run.job_id)
        changed(run_id)
        return as_json(view(known(run_id)), status_code=202)

    @app.get("/v1/runs/{run_id}/checkpoints", dependencies=auth)
    def checkpoints(run_id: str) -> list[Checkpoint]:
        """The run's checkpoints, oldest first."""
        steps = {}
        for p in (Path(known(run_id).run_dir) / "checkpoints").glob("step_*"):
            step = p.name.removeprefix("step_")
            if step.isdigit() and p.is_dir():  # a stray file or ``step_x`` is no checkpoint
                steps[int(step)] = p
        return [
            Checkpoint(step=step, path=str(p), files=sorted(f.name for f in p.iterdir()))
            for step, p in sorted(steps.items())
        ]

    @app.get("/v1/runs/{run_id}/samples", dependencies=auth, response_model=SamplePage)
    def samples(run_id: str, step: Annotated[int | None, Query(ge=0, le=10**9)] = None) -> Response:
        """The rollouts a GRPO run kept at ``step`` (by default its latest step with any): prompt, completion,
        each reward function's score, advantage, finish reason, policy version; and every step that kept some."""
        steps, shown, found = read_samples(Path(known(run_id).run_dir) / SAMPLES_FILE, step)
        return as_json(SamplePage.model_validate({"steps": steps, "step": shown, "samples": found}))

    @app.get("/v1/runs/{run_id}/recipe", dependencies=auth)
    def recipe(run_id: str) -> RunRecipe:
        """The validated recipe the run saved in its run directory, else the one validated at submission."""
        run = known(run_id)
        saved = Path(run.run_dir) / "recipe.yaml"
        if saved.is_file():
            return RunRecipe(recipe=yaml.safe_load(saved.read_text()), source="run_dir")
        return RunRecipe(recipe=run.recipe, source="service")

    @app.get("/v1/runs/{run_id}/files", dependencies=auth)
    def files(run_id: str) -> list[RunFile]:
        """The run directory's own files, its ``logs/`` and its local checkpoints' files, by path."""
        return [RunFile(path=name, num_bytes=p.stat().st_size) for name, p in run_files(known(run_id).run_dir).items()]

    @app.get("/v1/runs/{run_id}/files/{path:path}", dependencies=auth, responses={404: {"description": "No such file"}})
    def file(run_id: str, path: str) -> FileResponse:
        """One of the files ``/files`` lists; nothing else of the machine can be named."""
        found = run_files(known(run_id).run_dir).get(path)
        if found is None:
            raise HTTPException(404, f"run {run_id!r} has no file {path!r}")
        return FileResponse(found)

    @app.post("/v1/runs/{run_id}/report", status_code=204)
    def report(run_id: str, body: Report, supplied: Annotated[str, Depends(supplied_token)]) -> None:
        """Metric records from the run's controller; takes the run's own report token or the service token."""
        run = store.get(run_id)
        valid = run is not None and any(
            secrets.compare_digest(supplied.encode(), t.encode()) for t in (run.report_token, settings.token)
        )
        if not valid:
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
        store.add_metrics(run_id, [(seq, record.model_dump()) for seq, record in body.records])
        if run is not None and run.status == "pending":
            store.set_status(run_id, "running")
        changed(run_id)

    @app.get("/", dependencies=auth, response_class=HTMLResponse, include_in_schema=False)
    @app.get("/runs/{run_id}", dependencies=auth, response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text())

    return app
