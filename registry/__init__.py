"""Experiment tracking and model registry (MLflow adapter behind an interface)."""
