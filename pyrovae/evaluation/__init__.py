"""Estimators of log p(x) and their diagnostics."""
