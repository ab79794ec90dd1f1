"""Pipelines turn a batch of events into per-event decision arrays."""

from .base import Pipeline, load_pipeline

__all__ = ["Pipeline", "load_pipeline"]
