"""Thin job entry points: ``spark-submit jobs/<job>.py`` or ``python -m jobs.<job>``."""
