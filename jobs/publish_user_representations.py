"""The nightly job: user representations and purchasing-power tiers -> ``outputs/user_representations``.

    spark-submit jobs/publish_user_representations.py --config conf/local.yaml --date 2026-11-14
    python -m jobs.publish_user_representations --config conf/local.yaml --date 2026-11-14 [--model-version 3]

Loads the registered model carrying the ``champion`` alias (or ``--model-version``), reads
``features/user_sequences`` of ``--date`` (building it first when the partition is missing),
runs the model's user part on the executors and replaces partition ``dt = --date`` in one
atomic commit whose metadata records the model version, the input table versions and the
``layout`` of the vector (the column runs of each block, :func:`training.layout.published_layout`;
absent for a model whose vector has no blocks), which ``jobs/query.py similar`` reads. Before
committing, the result is checked (one row per user of the serving population, no nulls,
finite vectors of the model's length, 7 probabilities summing to 1, tiers 1..7); a bad
result is refused and the table stays as it was. Right after the commit the job builds the date's
nearest-neighbour index (``publish.index``; :mod:`features.vector_index`) at the path that commit
recorded (``index.path``), from the committed files, for ``jobs/query.py similar``; a failed index
build leaves the date published, is reported, and ``similar`` runs the exact scan. A second run of
the same date, started while one runs, is refused at its start, naming the first (a write lease, :mod:`core.leases`).

On a local lake (the embedded default, ``publish.from_files``) each Spark task reads a sequences
file with pyarrow and writes its users' published file itself, the checks coming from the same
pass; elsewhere Spark reads and writes them (``mapInArrow``). Either way each forward pass scores
users of similar sequence length (``publish.forward_batch``).
"""
from __future__ import annotations

import argparse

from pyspark import StorageLevel

from core import tables as t
from core.cli import JobContext, base_parser, main_entry
from core.delta import DeltaTables, get_tables
from core.errors import PlatformError
from core.spark import get_spark
from features import pipeline
from features import representations as reps
from features.representations import local_paths
from registry.models import ModelRegistry
from training import inference
from training.layout import layout_metadata, published_layout, runs
from training.spec import check_encoding

JOB = "publish_user_representations"


def run(ctx: JobContext) -> str:
    tables = get_tables(get_spark(ctx.cfg), ctx.cfg)
    with tables.lease(t.USER_REPRESENTATIONS, ctx.args.date.isoformat(), JOB, ctx.run_id):  # one run per date
        return _publish(ctx, tables)


def _publish(ctx: JobContext, tables: DeltaTables) -> str:
    cfg, day = ctx.cfg, ctx.args.date
    registry = ModelRegistry(cfg.mlflow)
    loaded = registry.load(ctx.args.model_version)
    check_encoding(loaded.spec, cfg.sequences, loaded.version)
    blocks = published_layout(loaded.model)  # where the dense part, interests and prices lie; [] for baselines
    layout = {"layout": layout_metadata(blocks)} if blocks else {}
    lines: list[str] = []
    ds = day.isoformat()
    index = reps.index_plan(tables, ds, ctx.run_id, cfg.publish.index.enabled)
    if not (tables.exists(t.USER_SEQUENCES) and ds in tables.partitions(t.USER_SEQUENCES)):
        res, lines = pipeline.build_user_sequences(tables, cfg, day, JOB, ctx.run_id)
        lines.append(f"built {res.describe()} dt={ds}")
    seq_version = tables.version(t.USER_SEQUENCES)
    seq = tables.read(t.USER_SEQUENCES, dt=ds, version=seq_version)
    population = seq.count()
    if population == 0:
        raise PlatformError(f"{t.USER_SEQUENCES.name} dt={ds} (v{seq_version}) has no users: nothing to publish; "
                            f"check raw/events for the look-back window of {ds} and rebuild it with build_sequences")
    state = registry.state_bytes(loaded.version)
    metadata = {
        "job": JOB, "run_id": ctx.run_id, "dt": ds, "model_name": registry.name, "model_version": loaded.version,
        "model_run_id": loaded.run_id, "model_aliases": loaded.aliases,
        "inputs": {t.USER_SEQUENCES.name: seq_version, **tables.metadata(t.USER_SEQUENCES, seq_version)
                   .get("inputs", {})},
        "embedding_dim": loaded.model.embedding_dim, **layout, **index}
    files = tables.files(t.USER_SEQUENCES, dt=ds, version=seq_version)
    if cfg.publish.from_files and local_paths(files) is not None \
            and local_paths([tables.uri(t.USER_REPRESENTATIONS)]) is not None:
        res = inference.publish_from_files(tables, cfg.publish, files, state, registry.name, loaded.version, ds,
                                           population, loaded.model.embedding_dim, metadata)
    else:
        out = inference.score_users(seq, state, registry.name, loaded.version, day, cfg.publish.partitions,
                                    cfg.publish.batch_size, cfg.publish.forward_batch
                                    ).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            checks = inference.check_representations(out, population, loaded.model.embedding_dim)
            res = tables.replace_partition(out, t.USER_REPRESENTATIONS, ds,
                                           metadata={**metadata, "rows": int(checks["rows"])})
        finally:
            out.unpersist()
    lines.append(f"{JOB}: wrote {res.describe()} dt={ds}: {population:,} users scored with "
                 f"{registry.name} version {loaded.version} under {tables.root}")
    if index:
        spans = [runs(b.columns) for b in blocks] if blocks else None
        try:
            lines.append(reps.build_index(tables, res.version, ds, index["index"]["path"], spans,
                                          ctx.cfg.publish.index))
        except (PlatformError, OSError, MemoryError, RuntimeError) as exc:  # the date stays published
            lines.append(f"warning: the vector index of dt={ds} was not built ({exc}); query similar runs the "
                         f"exact scan for this date")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = base_parser(JOB, __doc__ or "")
    p.add_argument("--model-version", help="registered model version (default: the champion alias)")
    return p


def main() -> None:
    main_entry(JOB, parser(), run)


if __name__ == "__main__":
    main()
