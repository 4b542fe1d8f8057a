"""Predictions over arrays, and what they are worth: metrics, reports, the decision rules, site thresholds."""
