"""Evaluation: metrics and re-evaluation of saved runs."""

from .metrics import classification_metrics, summary

__all__ = ["classification_metrics", "summary"]
