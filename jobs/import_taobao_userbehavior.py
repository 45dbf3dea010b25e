"""Import the Taobao user-behaviour log (Tianchi dataset 649) into the lake's input tables.

    python -m jobs.import_taobao_userbehavior --config conf/taobao.yaml --source ../shared/data/taobao_userbehavior
    spark-submit jobs/import_taobao_userbehavior.py --config conf/taobao.yaml --source PATH

Writes ``raw/events``, ``raw/items``, ``raw/users`` and ``raw/impressions`` (next-day interaction
lists), each replaced as a whole; the mapping, the time-window rule and the negatives' sampling are
``features/taobao.py``'s (docs/taobao.md). ``raw/follows``, ``raw/ppp_labels`` and
``raw/shop_prefs`` are not written: the log has no signal for them, so those tasks are disabled. The
data's terms allow research use, not redistribution: the lake is not part of the repository.
"""
from __future__ import annotations

import argparse
import datetime as _dt
from pathlib import Path

from core import tables as t
from core.cli import JobContext, base_parser, main_entry, parse_date
from core.delta import get_tables
from core.errors import PlatformError
from core.spark import get_spark
from features.taobao import (DEFAULT_FOLDER, RANK_FEATURES, WINDOW_END, WINDOW_START, ImportSettings, sha256,
                             source_file, table_frames)

JOB = "import_taobao_userbehavior"
ABSENT = (t.FOLLOWS, t.PPP_LABELS, t.SHOP_PREFS)


def settings(args: argparse.Namespace) -> ImportSettings:
    return ImportSettings(start=_dt.datetime.fromisoformat(args.period_start),
                          end=_dt.datetime.fromisoformat(args.period_end), ratio=args.ratio,
                          popularity_days=args.popularity_days, seed=args.seed, label_start=args.label_start)


def run(ctx: JobContext) -> str:
    s = settings(ctx.args)
    if ctx.cfg.inputs.rank_features_dim != len(RANK_FEATURES):
        raise PlatformError(f"inputs.rank_features_dim is {ctx.cfg.inputs.rank_features_dim}, the Taobao "
                            f"impressions carry {len(RANK_FEATURES)} ({', '.join(RANK_FEATURES)}); set "
                            f"inputs.rank_features_dim={len(RANK_FEATURES)} (conf/taobao.yaml does)")
    path = source_file(Path(ctx.args.source))
    spark = get_spark(ctx.cfg)
    tables = get_tables(spark, ctx.cfg)
    present = [spec.name for spec in ABSENT if tables.exists(spec)]
    if present:
        raise PlatformError(f"the lake at {ctx.cfg.lake_root} already holds {', '.join(present)} (another world's "
                            f"labels, which would train beside the Taobao log); import into an empty lake_root")
    frames, report = table_frames(spark, path, s)
    digest = sha256(path)
    meta = {"job": JOB, "run_id": ctx.run_id, "source": str(path), "source_sha256": digest,
            "period": [s.start.isoformat(), s.end.isoformat()], "negatives_per_positive": s.ratio,
            "popularity_days": s.popularity_days, "seed": s.seed,
            "label_days": [d.isoformat() for d in s.label_days()], "rank_features": list(RANK_FEATURES),
            "import": report.as_dict()}
    written = [tables.write(df, spec, "overwrite", metadata=meta) for spec, df in frames.items()]
    counts = ", ".join(f"{k} {v:,}" for k, v in sorted(report.by_behavior.items()))
    return "\n".join([
        f"{JOB}: {report.source_rows:,} lines of {path} (sha256 {digest[:12]}): kept {report.events:,} events "
        f"({counts}); dropped {report.duplicates:,} exact duplicates, {report.before_start:,} before "
        f"{s.start.isoformat()} and {report.after_end:,} from {s.end.isoformat()} on; "
        f"{report.items_with_two_categories:,} item(s) logged under two categories keep the most frequent",
        *[f"  wrote {w.describe()}" for w in written],
        f"  not written (no signal in the log; tasks disabled): {', '.join(spec.name for spec in ABSENT)}"])


def parser() -> argparse.ArgumentParser:
    p = base_parser(JOB, __doc__ or "", date=False)
    p.add_argument("--source", default=str(DEFAULT_FOLDER),
                   help="the taobao_userbehavior folder (UserBehavior_sample.csv) or the CSV file itself")
    p.add_argument("--period-start", default=WINDOW_START.isoformat(),
                   help="events before this time are dropped and counted (default: the dataset's documented "
                        "start, %(default)s)")
    p.add_argument("--period-end", default=WINDOW_END.isoformat(),
                   help="events from this time on are dropped and counted (default %(default)s)")
    p.add_argument("--ratio", type=int, default=ImportSettings.ratio,
                   help="negatives per positive in a next-day list (default %(default)s)")
    p.add_argument("--popularity-days", type=int, default=ImportSettings.popularity_days,
                   help="days before a label day whose events give the popularity rank features "
                        "(default %(default)s)")
    p.add_argument("--seed", type=int, default=ImportSettings.seed, help="the negatives' draw (default %(default)s)")
    p.add_argument("--label-start", type=parse_date, default=None,
                   help="first label day (default: the second UTC day of the period)")
    return p


def main() -> None:
    main_entry(JOB, parser(), run)


if __name__ == "__main__":
    main()
