"""Multi-task training on a declared feature table: the census importer, the split, the encoding fitted on
training rows only, the one-line errors on bad input, serving's encoding, and the jobs end to end
(build, train, register, promote, pyfunc) with real Delta, Petastorm and MLflow."""
from __future__ import annotations

import contextlib
import gzip
import io
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from core import tables as t
from core.errors import PlatformError
from features import tabular as ft
from features.census import CENSUS_INCOME, COLUMNS, DEFAULT_FOLDER, census_frame, read_census
from tests.conftest import make_config
from tests.helpers import run

TOY = t.TableSpec("raw/toy", t.T.StructType([
    t._f("row_id", t.LONG), t._f("color", t.STR), t._f("size", t.INT), t._f("amount", t.DBL),
    t._f("score", t.STR), t._f("bought", t.STR), t._f("segment", t.STR)]))
TASKS = ('[{name: bought, column: bought, kind: binary, classes: ["no", "yes"], positive: "yes"}, '
         '{name: segment, column: segment, kind: multiclass, classes: [p, q, r]}]')
TOY_SETTINGS = ("tabular.name=toy", "tabular.table=raw/toy", "tabular.categorical=[color, size]",
                "tabular.dense=[amount, score]", "tabular.dense_log=[amount]", "tabular.dense_bins=8",
                f"tabular.tasks={TASKS}",
                "tabular.split.seed=3", "tabular.split.test_frac=0.2", "tabular.split.valid_frac=0.2",
                "mlflow.registered_model=toy_model", "training.use_distributor=false", "training.torch_threads=1",
                "training.epochs=3", "training.batch_size=64", "training.lr=0.01",
                "training.early_stopping={evals_per_epoch: 1, patience: 2, min_rows: 0}")


def toy_rows(n: int = 400, seed: int = 0) -> list[dict]:
    """bought = yes when color is red or amount > 50; segment = size modulo 3; 'violet' only in row 7."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        color = "violet" if i == 7 else str(rng.choice(["red", "green", "blue"]))
        size, amount = int(rng.integers(1, 7)), float(rng.exponential(40))
        rows.append({"row_id": i, "color": color, "size": size, "amount": amount, "score": f"{rng.normal():.3f}",
                     "bought": "yes" if color == "red" or amount > 50 else "no", "segment": "pqr"[size % 3]})
    return rows


def toy_lake(spark, tmp: Path, rows: list[dict] | None = None, *extra: str):  # noqa: ANN001, ANN201
    from core.delta import get_tables
    from tests.helpers import put

    cfg = make_config(tmp, *TOY_SETTINGS, *extra)
    tables = get_tables(spark, cfg)
    put(spark, tables, TOY, rows if rows is not None else toy_rows())
    return cfg, tables


def test_build_splits_by_the_seeded_permutation_and_fits_on_training_rows_only(spark, tmp_path) -> None:
    cfg, tables = toy_lake(spark, tmp_path)
    ft.build_tabular_set(tables, cfg.tabular)
    built = ft.load_tabular_set(tables, cfg.tabular)
    assert built.rows == {"train": 240, "valid": 80, "test": 80}
    enc = tables.read(ft.encoded_table("toy")).toPandas().set_index("row_id").sort_index()
    assert len(enc) == 400  # every row kept
    codes = ft.permutation_splits(400, 3, 0.2, 0.2)
    assert (enc["split"].map({"train": 0, "valid": 1, "test": 2}).to_numpy() == codes).all()
    # the vocabulary and statistics come from training rows only
    assert ("violet" in built.encoding.vocab["color"]) == (codes[7] == 0)
    train_ids = np.flatnonzero(codes == 0)
    amounts = np.array([r["amount"] for r in toy_rows()])[train_ids]
    assert built.encoding.mean[0] == pytest.approx(np.mean(np.log1p(amounts)), rel=1e-6)
    train_dense = np.stack(enc.loc[train_ids, "dense"].to_numpy())
    assert np.abs(train_dense.mean(axis=0)).max() < 1e-4  # standardised on the training split
    labels = np.stack(enc["labels"].to_numpy())
    rows = toy_rows()
    assert (labels[:, 0] == np.array([r["bought"] == "yes" for r in rows])).all()
    assert (labels[:, 1] == np.array(["pqr".index(r["segment"]) for r in rows])).all()
    # the bin edges: the standardised training values' minimum, octiles and maximum
    assert built.encoding.bins == 8 and len(built.encoding.edges) == 2
    for j, edges in enumerate(built.encoding.edges):
        values = train_dense[:, j]
        assert len(edges) == 9 and np.all(np.diff(edges) > 0)
        assert edges[0] == pytest.approx(values.min(), abs=1e-5) and edges[-1] == pytest.approx(values.max(), abs=1e-5)
        below = [np.mean(values <= e) for e in edges[1:-1]]
        np.testing.assert_allclose(below, np.arange(1, 8) / 8, atol=0.02)
    # a config asking for other bins than the build's is refused until the table is rebuilt
    other = cfg.tabular.model_copy(update={"dense_bins": 16})
    with pytest.raises(PlatformError, match="dense_bins=8, the config says 16; rebuild"):
        ft.load_tabular_set(tables, other)


def test_serving_encodes_raw_rows_exactly_as_the_spark_build(spark, tmp_path) -> None:
    from training.tabular import encode_frame

    cfg, tables = toy_lake(spark, tmp_path)
    ft.build_tabular_set(tables, cfg.tabular)
    built = ft.load_tabular_set(tables, cfg.tabular)
    enc = tables.read(ft.encoded_table("toy")).toPandas().set_index("row_id").sort_index()
    raw = pd.DataFrame(toy_rows())
    raw.loc[3, "color"] = "never-seen"
    enc.loc[3, "cat"][0] = ft.UNKNOWN
    got = encode_frame(built.encoding.to_dict(), raw)
    np.testing.assert_array_equal(got["cat"].numpy(), np.stack(enc["cat"].to_numpy()))
    np.testing.assert_allclose(got["dense"].numpy(), np.stack(enc["dense"].to_numpy()), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case, expected", [
    ("missing", "column 'score' declared in tabular.dense is missing"),
    ("label", "column 'bought' (task bought) holds 1 rows outside its classes, e.g. 'maybe'"),
    ("dense", "dense column 'score' holds 1 non-numeric values, e.g. 'n/a'"),
    ("ids", "needs row_id to number the rows 0..399"),
])
def test_bad_input_is_one_line_naming_the_column_and_the_fix(spark, tmp_path, case: str, expected: str) -> None:
    rows = toy_rows()
    extra: tuple[str, ...] = ()
    if case == "missing":
        extra = ("tabular.dense=[amount, scores]", "tabular.dense_log=[amount]")
        expected = "column 'scores' declared in tabular.dense is missing"
    elif case == "label":
        rows[5]["bought"] = "maybe"
    elif case == "dense":
        rows[9]["score"] = "n/a"
    else:
        rows[0]["row_id"] = 1000
    cfg, tables = toy_lake(spark, tmp_path, rows, *extra)
    with pytest.raises(PlatformError, match="^table raw/toy: ") as err:
        ft.build_tabular_set(tables, cfg.tabular)
    assert expected in str(err.value) and "\n" not in str(err.value)


ZEROS = ("det_ind_code", "det_occ_code", "wage_per_hour", "capital_gains", "capital_losses", "stock_dividends",
         "num_emp", "own_or_self", "vet_benefits", "weeks_worked")


def census_value(column: str, i: int) -> str:
    if column == "age":
        return str(i % 90)
    if column in ZEROS:
        return "0"
    if column == "year":
        return "95"
    if column == "instance_weight":
        return "1000.5"
    if column == "hisp_origin":
        return "NA" if i % 2 == 0 else "All other"
    if column == "income_50k":
        return "50000+." if i % 3 == 0 else "- 50000."
    return "?"


def census_like(path: Path, rows: int) -> None:
    """A file in the census format: 42 comma-and-space fields, 'NA' in hisp_origin on every other row."""
    lines = [", ".join(census_value(c, i) for c in COLUMNS) for i in range(rows)]
    path.mkdir(parents=True, exist_ok=True)
    with gzip.open(path / "census-income.test.gz", "wt") as f:
        f.write("\n".join(lines) + "\n")
    (path / "columns.txt").write_text("\n".join(COLUMNS) + "\n")


def test_the_census_importer_keeps_every_row_and_the_literal_na(spark, tmp_path) -> None:
    from core.delta import get_tables

    census_like(tmp_path / "census", 50)
    frame, digest = read_census(tmp_path / "census")
    assert len(frame) == 50 and (frame["hisp_origin"] == "NA").sum() == 25 and len(digest) == 64
    tables = get_tables(spark, make_config(tmp_path))
    tables.write(census_frame(spark, frame), CENSUS_INCOME, "overwrite")
    back = tables.read(CENSUS_INCOME).toPandas()
    assert len(back) == 50 and (back["hisp_origin"] == "NA").sum() == 25
    assert sorted(back["row_id"]) == list(range(50))
    with pytest.raises(PlatformError, match="census data not found"):
        read_census(tmp_path / "absent")


def test_the_real_census_file_imports_whole(spark, tmp_path) -> None:
    if not (DEFAULT_FOLDER / "census-income.test.gz").is_file():
        pytest.skip(f"the census data is absent ({DEFAULT_FOLDER}); it is never committed")
    frame, digest = read_census(DEFAULT_FOLDER)
    assert digest == "5ac4cacd3ca9f1ecb10de1a0a41e4ac68fdc419e3fec190f5c0c6cc03b2ea659"
    assert len(frame) == 99_762
    assert (frame["hisp_origin"] == "NA").sum() == 405  # kept as a value, not a missing one
    assert (frame["income_50k"] == "50000+.").sum() == 6_186
    assert (frame["marital_stat"] == "Never married").sum() == 43_143


def test_jobs_build_train_register_promote_and_serve_raw_rows(spark, tmp_path) -> None:
    from jobs import build_tabular_set, train_tabular
    from registry.models import ModelRegistry

    cfg, tables = toy_lake(spark, tmp_path)
    assert run(build_tabular_set, tmp_path, overrides=TOY_SETTINGS) == 0
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert run(train_tabular, tmp_path, overrides=TOY_SETTINGS) == 0
        assert run(train_tabular, tmp_path, overrides=(*TOY_SETTINGS, "training.seed=9")) == 0
    text = out.getvalue()
    assert "promotion of version 1: PROMOTED: no current champion" in text
    assert "promotion of version 2: " in text and "bought_auc" in text.split("promotion of version 2: ")[1]
    test_line = next(line for line in text.splitlines() if line.startswith("test: "))
    assert float(test_line.split("bought_auc=")[1].split()[0]) > 0.8
    reg = ModelRegistry(cfg.mlflow)
    assert reg.champion_version() in ("1", "2")
    model = mlflow.pyfunc.load_model(f"models:/{cfg.mlflow.registered_model}/1")
    scored = model.predict(pd.DataFrame(toy_rows(20, seed=5)))
    assert list(scored.columns) == ["bought_prob", "segment_probs"]
    assert scored["bought_prob"].between(0, 1).all()
    assert np.allclose([sum(p) for p in scored["segment_probs"]], 1.0, atol=1e-5)
