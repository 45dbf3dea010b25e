"""The UCI Census-Income (KDD) file as a Delta table (``raw/census_income``), every row kept.

The file (``../shared/data/census_income_kdd/census-income.test.gz``, 99,762 rows; see that folder's
README) has 42 comma-and-space separated fields and no header; its column names are in
``columns.txt`` beside it. It is read with ``keep_default_na=False``: the literal ``NA`` of
``hisp_origin`` is a value, not a missing one. ``row_id`` numbers the rows 0..n-1 in file order,
which :class:`core.config.TabularSplit`'s permutation split relies on.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from core import tables as t
from core.errors import PlatformError

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

DEFAULT_FOLDER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "census_income_kdd"
FILE = "census-income.test.gz"
INTEGER_COLUMNS = ("age", "det_ind_code", "det_occ_code", "wage_per_hour", "capital_gains", "capital_losses",
                   "stock_dividends", "num_emp", "own_or_self", "vet_benefits", "weeks_worked", "year")
COLUMNS = ("age", "class_worker", "det_ind_code", "det_occ_code", "education", "wage_per_hour", "hs_college",
           "marital_stat", "major_ind_code", "major_occ_code", "race", "hisp_origin", "sex", "union_member",
           "unemp_reason", "full_or_part_emp", "capital_gains", "capital_losses", "stock_dividends",
           "tax_filer_stat", "region_prev_res", "state_prev_res", "det_hh_fam_stat", "det_hh_summ",
           "instance_weight", "mig_chg_msa", "mig_chg_reg", "mig_move_reg", "mig_same", "mig_prev_sunbelt",
           "num_emp", "fam_under_18", "country_father", "country_mother", "country_self", "citizenship",
           "own_or_self", "vet_question", "vet_benefits", "weeks_worked", "year", "income_50k")


def _type(column: str) -> t.T.DataType:
    if column in INTEGER_COLUMNS:
        return t.INT
    return t.DBL if column == "instance_weight" else t.STR


CENSUS_INCOME = t.TableSpec("raw/census_income", t.T.StructType(
    [t._f("row_id", t.LONG, False)] + [t._f(c, _type(c), False) for c in COLUMNS]),
    description="UCI Census-Income (KDD), one row per file line (features/census.py)")


def read_census(folder: Path) -> tuple["pd.DataFrame", str]:
    """The file's rows (a pandas frame with ``row_id``) and the file's sha256.

    Raises:
        PlatformError: the file or ``columns.txt`` is missing, or the columns differ from the expected ones.
    """
    import pandas as pd

    path, names = folder / FILE, folder / "columns.txt"
    if not path.is_file() or not names.is_file():
        raise PlatformError(f"census data not found: {path} and {names} are needed; pass --source FOLDER (the "
                            f"census_income_kdd folder of ../shared/data)")
    cols = names.read_text().split()
    if tuple(cols) != COLUMNS:
        raise PlatformError(f"{names}: expected the 42 census columns {COLUMNS[:3]}..., found {len(cols)} "
                            f"({cols[:3]}...); is this the UCI Census-Income (KDD) folder?")
    frame = pd.read_csv(path, header=None, names=cols, skipinitialspace=True, keep_default_na=False)
    frame.insert(0, "row_id", range(len(frame)))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return frame, digest


def census_frame(spark: "SparkSession", frame: "pd.DataFrame") -> "DataFrame":
    """The rows as a Spark DataFrame of ``CENSUS_INCOME``'s schema (bounded by the file: 99,762 rows)."""
    return spark.createDataFrame(frame, schema=CENSUS_INCOME.schema).coalesce(1)
