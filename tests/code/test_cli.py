"""Jobs fail with one line that says what to fix."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core import spark as core_spark
from core.errors import EnvironmentProblem

ROOT = Path(__file__).resolve().parents[2]


def run_module(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                          env=env if env is not None else os.environ.copy(), timeout=300)


def test_bad_config_key_fails_in_one_line() -> None:
    res = run_module(["jobs.generate_demo_world", "--config", "conf/local.yaml", "--set", "demo.n_user=3"])
    assert res.returncode == 1
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines[-1] == ("generate_demo_world failed: config conf/local.yaml: unknown key 'demo.n_user'")


def test_missing_java_is_reported_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("JAVA_HOME",)}
    env["PATH"] = str(tmp_path)  # no java on it
    res = run_module(["jobs.generate_demo_world", "--config", "conf/local.yaml",
                      "--set", f"lake_root={tmp_path / 'lake'}"], env)
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("generate_demo_world failed: Java not found: install Java 17")


def test_wrong_python_version_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core_spark.sys, "version_info", (3, 12, 0, "final", 0))
    with pytest.raises(EnvironmentProblem, match="Python 3.11 is required, found 3.12"):
        core_spark.check_runtime()


def test_setup_preflight_names_what_to_install(tmp_path: Path) -> None:
    script = ROOT / "scripts" / "check_env.sh"
    res = subprocess.run(["bash", str(script), str(tmp_path / "python3.11")], capture_output=True, text=True)
    assert res.returncode == 1 and "install Python 3.11" in res.stderr
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 3.10\n")
    fake.chmod(0o755)
    res = subprocess.run(["bash", str(script), str(fake)], capture_output=True, text=True)
    assert res.returncode == 1 and "is Python 3.10; this platform needs Python 3.11" in res.stderr
    res = subprocess.run(["bash", str(script), sys.executable], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


@pytest.mark.reliability(
    "config",
    "a malformed --date",
    "a usage error (exit 2) naming the argument")
def test_bad_date_is_a_usage_error() -> None:
    res = run_module(["jobs.generate_demo_world", "--config", "conf/local.yaml", "--date", "2026-13-01"])
    assert res.returncode == 2 and "expected a date YYYY-MM-DD" in res.stderr


@pytest.mark.reliability(
    "config",
    "--end before --start (training set, GBDT features, training)",
    "a usage error (exit 2) naming both dates, before any work; nothing written")
@pytest.mark.parametrize("job", [["jobs.build_training_set"], ["jobs.build_gbdt_features"],
                                 ["jobs.train", "--mode", "full"]])
def test_end_before_start_is_a_usage_error(job: list[str], tmp_path: Path) -> None:
    res = run_module([*job, "--config", "conf/local.yaml", "--set", f"lake_root={tmp_path / 'lake'}",
                      "--start", "2026-11-05", "--end", "2026-11-04"])
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].endswith("error: --end 2026-11-04 is before --start 2026-11-05")
    assert not (tmp_path / "lake").exists()


def test_unexpected_errors_keep_the_inner_reason() -> None:
    from core.cli import failure_reason

    exc = RuntimeError("An exception was thrown from the Python worker.\nTraceback:\n  File x\n"
                       "ValueError: column user_id is null\n")
    assert failure_reason(exc) == "RuntimeError: ValueError: column user_id is null"
