"""Pipelines turn a batch of events into per-event decision arrays.

Every shipped pipeline is listed here, once, by the module that registers it
(``@register_pipeline``); a module is imported only when its pipeline is asked for.
"""

from .base import (
    Pipeline,
    PipelineMetric,
    available_pipelines,
    is_pipeline,
    load_pipeline,
    pipeline_class,
    register_pipeline,
    register_pipeline_module,
)

register_pipeline_module("pulse", "trigger.pipelines.pulse")
register_pipeline_module("segment", "trigger.pipelines.segment")
register_pipeline_module("denoise", "trigger.pipelines.denoise")

__all__ = ["Pipeline", "PipelineMetric", "available_pipelines", "is_pipeline", "load_pipeline", "pipeline_class",
           "register_pipeline", "register_pipeline_module"]
