"""Batch analysis of unit-level files: analyze, past results, plan."""
