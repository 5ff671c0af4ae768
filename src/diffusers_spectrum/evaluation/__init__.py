"""Evaluation: metrics, spectrum diagnostics, analyze, plotting."""
