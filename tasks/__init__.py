"""Prefect tasks: thin wrappers that give each pipeline step retries, logs and a place in the UI."""
