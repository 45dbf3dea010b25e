"""Airflow DAG: the platform's daily run (``jobs/daily.py``), one spark-submit per day.

Copy this file into Airflow's DAG folder and set ``PLATFORM_HOME`` (a checkout holding
``jobs/daily.py``, ``dist/platform.zip`` from ``make dist`` and the config) and ``PLATFORM_CONFIG``.
Needs ``apache-airflow-providers-apache-spark`` and a ``spark_default`` connection to the cluster.

* One task per day: the run of logical date D (``{{ ds }}``, the day whose data is complete; the run
  starts at 03:00 UTC the next day) calls ``jobs/daily.py --date D``.
* ``catchup=True``: after an outage, or with a ``start_date`` in the past, Airflow creates the
  missing days and runs them one at a time, oldest first (``max_active_runs=1`` and
  ``depends_on_past``: the training set of a day rolls the previous day's forward).
* ``retries``: a retried day resumes at its failed step; the steps it finished are skipped
  (the run log ``ops/daily_runs``).

The equivalent crontab line is ``examples/crontab.txt``.
"""
from __future__ import annotations

import datetime as dt
import os

from airflow import DAG
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

PLATFORM_HOME = os.environ.get("PLATFORM_HOME", "/opt/user-repr-platform")
PLATFORM_CONFIG = os.environ.get("PLATFORM_CONFIG", os.path.join(PLATFORM_HOME, "conf/cluster.yaml"))

with DAG(
    dag_id="user_representations_daily",
    description="sequences, training set, statistics, incremental training with the gate, publishing",
    start_date=dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc),
    schedule="0 3 * * *",
    catchup=True,
    max_active_runs=1,
    default_args={
        "owner": "user-representations",
        "depends_on_past": True,
        "retries": 2,
        "retry_delay": dt.timedelta(minutes=20),
        "execution_timeout": dt.timedelta(hours=6),
    },
    tags=["user-representations"],
) as dag:
    SparkSubmitOperator(
        task_id="daily",
        conn_id="spark_default",
        application=os.path.join(PLATFORM_HOME, "jobs/daily.py"),
        py_files=os.path.join(PLATFORM_HOME, "dist/platform.zip"),
        packages="io.delta:delta-spark_2.12:3.3.2",
        name="user-repr-daily-{{ ds }}",
        application_args=["--config", PLATFORM_CONFIG, "--date", "{{ ds }}"],
    )
