"""Prefect flows: orchestration only; the work is in the anonymizer library."""
