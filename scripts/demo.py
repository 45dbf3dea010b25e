"""The README's main command: the whole daily pipeline on the embedded default.

Each step runs as its own process, exactly as a scheduler would run it
(``python -m jobs.<job> --config ... --date ...``), and stops the demo at the first failure.
"""
from __future__ import annotations

import argparse
import datetime as dt
import shlex
import subprocess
import sys
import time

from core.config import load_config


def steps(config: str, first: dt.date, last: dt.date) -> list[list[str]]:
    c = ["--config", config]
    return [
        ["jobs.generate_demo_world", *c, "--oracle"],
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", default="conf/local.yaml")
    args = p.parse_args()
    cfg = load_config(args.config)
    first = cfg.demo.start_date
    last = first + dt.timedelta(days=cfg.demo.days - 1)
    started = time.time()
    for step in steps(args.config, first, last):
        cmd = [sys.executable, "-m", *step]
        print(f"\n$ python -m {' '.join(shlex.quote(a) for a in step)}", flush=True)
        t0 = time.time()
        res = subprocess.run(cmd + ["--log-level", "WARNING"])
        if res.returncode != 0:
            print(f"demo stopped: step {step[0]} failed (exit {res.returncode})", file=sys.stderr)
            sys.exit(res.returncode)
        print(f"  ({time.time() - t0:.0f}s)", flush=True)
    print(f"\ndemo finished in {time.time() - started:.0f}s; lake under {cfg.lake_root}")


if __name__ == "__main__":
    main()
