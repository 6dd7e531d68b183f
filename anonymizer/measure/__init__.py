"""Measure: what validation needs to know about every image and every face."""
