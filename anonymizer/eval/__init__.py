"""Evaluation harnesses: measure what the pipeline's components achieve on labelled data."""
