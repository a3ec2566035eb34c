"""Readers for real formats, dataset preparation and missing-modality policies."""
