"""The data pipeline: operators over training records (stats apart from decisions), rule filters, deduplication,
model-based scoring and classification, rejection sampling; run locally or on Ray Data. See docs/pipeline.md.

    from qwen25vl.data.pipeline import load_pipeline, run_pipeline
    summary = run_pipeline(load_pipeline("pipeline.yaml"), "data/", "out/")
"""

from qwen25vl.data.pipeline.ops import (REGISTRY, FilterOp, GlobalOp, Operator, Pipeline, StatsOp, build_op,
                                        load_pipeline, register)
from qwen25vl.data.pipeline.runner import Run, run_pipeline

__all__ = ["REGISTRY", "FilterOp", "GlobalOp", "Operator", "Pipeline", "StatsOp", "Run", "build_op",
           "load_pipeline", "register", "run_pipeline"]
