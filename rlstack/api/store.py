"""Runs and their metrics in a SQL database (SQLite by default; any SQLAlchemy URL, e.g. PostgreSQL).

A metric record is keyed by ``(run_id, seq)``, its line number in the run's
``metrics.jsonl``: the running controller's reports and the service's own reading of
that file write the same rows, so either path, or both, gives the same series.

The database holds each run's report token, so a SQLite file is created, or kept, with mode 0600.
"""

import os
import time
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Integer, String, create_engine, func, make_url, select
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

TERMINAL = frozenset({"succeeded", "failed", "stopped"})
STATUSES = ("pending", "running", *sorted(TERMINAL))


class Base(DeclarativeBase):
    pass


class RunRecord(Base):
    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), index=True)
    job_id: Mapped[str] = mapped_column(String(100))
    run_dir: Mapped[str] = mapped_column(String(1000))
    recipe: Mapped[dict[str, Any]] = mapped_column(JSON)
    report_token: Mapped[str] = mapped_column(String(64))
    adopted: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    ended_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    step: Mapped[int] = mapped_column(Integer, default=-1)
    latest: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    message: Mapped[str | None] = mapped_column(String(2000), nullable=True)


class MetricRecord(Base):
    __tablename__ = "metrics"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    step: Mapped[int] = mapped_column(Integer, index=True)
    time: Mapped[float] = mapped_column(Float)
    values: Mapped[dict[str, Any]] = mapped_column(JSON)


class Store:
    """Sessions on one database; every method is one transaction."""

    def __init__(self, url: str):
        connect_args = {"check_same_thread": False, "timeout": 30} if url.startswith("sqlite") else {}
        database = make_url(url).database
        if url.startswith("sqlite") and database and database != ":memory:":
            os.close(os.open(database, os.O_WRONLY | os.O_CREAT, 0o600))
            os.chmod(database, 0o600)  # one created before this rule, or under a looser umask
        self.engine = create_engine(url, connect_args=connect_args)
        Base.metadata.create_all(self.engine)
        self.session = sessionmaker(self.engine, expire_on_commit=False)

    def add_run(self, run: RunRecord) -> None:
        with self.session.begin() as session:
            session.add(run)

    def get(self, run_id: str) -> RunRecord | None:
        with self.session() as session:
            return session.get(RunRecord, run_id)

    def page(self, status: str | None, offset: int, limit: int) -> tuple[list[RunRecord], int]:
        """A page of runs, newest first, and the total count."""
        query = select(RunRecord)
        if status is not None:
            query = query.where(RunRecord.status == status)
        with self.session() as session:
            total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
            runs = session.scalars(query.order_by(RunRecord.created_at.desc()).offset(offset).limit(limit)).all()
        return list(runs), total

    def active(self) -> list[RunRecord]:
        with self.session() as session:
            return list(session.scalars(select(RunRecord).where(RunRecord.status.not_in(TERMINAL))).all())

    def counts(self) -> dict[str, int]:
        with self.session() as session:
            rows = session.execute(select(RunRecord.status, func.count()).group_by(RunRecord.status)).all()
        return {status: count for status, count in rows}

    def set_status(self, run_id: str, status: str, message: str | None = None) -> None:
        """Move a run to ``status``, stamping when it started or ended."""
        with self.session.begin() as session:
            run = session.get(RunRecord, run_id)
            if run is None or run.status == status:
                return
            run.status = status
            now = time.time()
            if status == "running" and run.started_at is None:
                run.started_at = now
            if status in TERMINAL:
                run.ended_at = now
            if message:
                run.message = message[-2000:]

    def add_metrics(self, run_id: str, records: list[tuple[int, dict[str, Any]]]) -> int:
        """Insert ``(seq, record)`` pairs not yet stored; returns how many were new."""
        if not records:
            return 0
        rows: list[dict[str, Any]] = [
            {"run_id": run_id, "seq": seq, "step": int(r.get("step", -1)), "time": float(r.get("time", 0.0)),
             "values": {k: v for k, v in r.items() if k not in ("step", "time")}}
            for seq, r in records
        ]  # fmt: skip
        with self.session.begin() as session:
            if self.engine.dialect.name == "sqlite":
                result = session.execute(sqlite_insert(MetricRecord).values(rows).on_conflict_do_nothing())
                new = result.rowcount or 0  # type: ignore[attr-defined]
            else:
                known = set(
                    session.scalars(
                        select(MetricRecord.seq).where(
                            MetricRecord.run_id == run_id, MetricRecord.seq.in_([r["seq"] for r in rows])
                        )
                    )
                )
                fresh = [r for r in rows if r["seq"] not in known]
                session.add_all(MetricRecord(**r) for r in fresh)
                new = len(fresh)
            run = session.get(RunRecord, run_id)
            if run is not None and new:
                latest = dict(run.latest or {})
                for row in sorted(rows, key=lambda r: r["seq"]):
                    latest.update(row["values"])
                run.latest = latest
                run.step = max(run.step, *(r["step"] for r in rows))
        return new

    def metrics(self, run_id: str, since_step: int = 0, after_seq: int = -1) -> list[MetricRecord]:
        query = select(MetricRecord).where(
            MetricRecord.run_id == run_id, MetricRecord.step >= since_step, MetricRecord.seq > after_seq
        )
        with self.session() as session:
            return list(session.scalars(query.order_by(MetricRecord.seq)).all())
