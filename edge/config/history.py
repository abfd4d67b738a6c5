"""The ``history`` section: every verdict kept in storage.dir/history.sqlite3, for the page and `lineguard history`."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class HistoryConfig(BaseModel):
    """Verdict history (edge.publish.history): bounded by age and size, oldest removed first."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: bool = Field(True, strict=True, description="Keep every verdict in storage.dir/history.sqlite3.")
    retention_days: float = Field(
        30.0, gt=0, strict=True, description="Verdicts older than this many days are removed, oldest first."
    )
    max_mb: float = Field(
        200.0, gt=0, strict=True,
        description="Most disk space the history's rows may use; past it the oldest are removed. "
        "storage.reserve_mb also applies: below it history writes wait and the outbox keeps the space.",
    )
