#!/usr/bin/env bash
# Pre-flight for `make setup`: Python 3.11 and Java (17 recommended) must be present.
# Installs Debian's openjdk-17-jre-headless when Java is missing and we may use apt-get.
set -u
PY=${1:-python3.11}
if ! command -v "$PY" >/dev/null 2>&1; then
  echo "error: $PY not found; install Python 3.11 (e.g. apt-get install python3.11 python3.11-venv) or run make PY=/path/to/python3.11" >&2; exit 1
fi
ver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$ver" != "3.11" ]; then
  echo "error: $PY is Python $ver; this platform needs Python 3.11 (apt-get install python3.11 python3.11-venv, then make PY=python3.11)" >&2; exit 1
fi
if ! command -v java >/dev/null 2>&1 && [ -z "${JAVA_HOME:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "Java not found: installing openjdk-17-jre-headless from Debian packages" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null) \
      || { echo "error: could not install Java; install Java 17 (apt-get install openjdk-17-jre-headless)" >&2; exit 1; }
  else
    echo "error: Java not found; install Java 17 (sudo apt-get install openjdk-17-jre-headless) or set JAVA_HOME" >&2; exit 1
  fi
fi
exit 0
