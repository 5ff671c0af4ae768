"""Pipelines: stock-pipeline export and pipeline components."""
