#!/usr/bin/env bash
# Re-resolve requirements.lock (maintainers only; CI and users install the lock with --no-deps).
# One resolver pass for everything except petastorm, then petastorm --no-deps with its runtime needs,
# because torch 2.13.0 (setuptools>=77) and petastorm 0.13.1 (setuptools<70) cannot co-resolve.
set -euo pipefail
tmp=$(mktemp -d)
python3.11 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install "torch==2.13.0" "pyspark==3.5.*" "pyarrow==14.0.2" "numpy<2" "pandas==2.2.*" \
  "deltalake==1.6.6" "delta-spark==3.3.*" "mlflow==3.*" duckdb pyyaml "pydantic>=2" scikit-learn matplotlib \
  psutil lightgbm faiss-cpu tqdm pytest pytest-timeout mypy flake8 types-PyYAML dill diskcache future pyzmq
"$tmp/venv/bin/pip" install --no-deps petastorm==0.13.1
{ sed -n '1,/^setuptools==/p' requirements.lock | sed '$d'
  echo "setuptools==$("$tmp/venv/bin/python" -c 'import setuptools; print(setuptools.__version__)')"
  "$tmp/venv/bin/pip" freeze | grep -v '^-e'; } > requirements.lock.new
mv requirements.lock.new requirements.lock
rm -rf "$tmp"
