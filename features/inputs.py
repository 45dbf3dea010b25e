"""Reading a job's input tables: existence, contract schema, the versions read (for lineage)."""
from __future__ import annotations

import datetime as _dt
import logging
from typing import TYPE_CHECKING, Sequence

from core.errors import PlatformError
from core.tables import TableSpec
from features.quality import Validated, validated

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from core.delta import DeltaTables

logger = logging.getLogger(__name__)


class Inputs:
    """Reads input tables at a pinned version and remembers which versions a job read."""

    def __init__(self, tables: "DeltaTables", as_of: _dt.date, rank_dim: int):
        self.tables = tables
        self.as_of = as_of
        self.rank_dim = rank_dim
        self.versions: dict[str, int] = {}
        self.validations: list[Validated] = []  # every table read, for enforce_bound, write_quarantine, release
        self._snapshots: dict[str, Validated] = {}

    def available(self, spec: TableSpec) -> bool:
        return self.tables.exists(spec)

    def snapshot(self, spec: TableSpec) -> "DataFrame":
        """The valid rows of a whole (snapshot) table: schema-checked, with row-level quarantine
        like :meth:`partitions` (its :class:`Validated` joins :attr:`validations`). Read once per job."""
        if spec.name not in self._snapshots:
            version = self.tables.version(spec)
            result = validated(self.tables.read(spec, version=version), spec, self.as_of, self.rank_dim)
            self.versions[spec.name] = version
            self.validations.append(result)
            self._snapshots[spec.name] = result
        return self._snapshots[spec.name].valid

    def partitions(self, spec: TableSpec, days: Sequence[str], require: bool = True,
                   version: int | None = None) -> Validated:
        """The ``dt`` partitions ``days`` of ``spec`` (at ``version``, default the latest), schema-checked,
        with row-level quarantine."""
        version = self.tables.version(spec) if version is None else version
        present = set(self.tables.partitions(spec, version))
        wanted = [d for d in days if d in present]
        if require and not wanted:
            raise PlatformError(f"table {spec.name} has no partition in {days[0]}..{days[-1]}; "
                                f"run the upstream load (or generate_demo_world) for those dates")
        df = self.tables.read(spec, dt=wanted, version=version)
        self.versions[spec.name] = version
        result = validated(df, spec, self.as_of, self.rank_dim)
        self.validations.append(result)
        return result
