"""Run reports: a markdown + self-contained HTML report with plots, and deploy.md.

``write_report(run_dir, stages)`` tabulates accuracy, size and speed per
stage with compression ratios against the first stage and plots the
trade-offs; ``channels_per_layer`` and ``per_layer_latency`` feed its
per-layer plots; ``write_deploy_md`` explains how to run the ONNX model.
"""
from __future__ import annotations

from edgeslim.report.deploy import deploy_snippet, write_deploy_md
from edgeslim.report.layers import channels_per_layer, per_layer_latency
from edgeslim.report.table import COLUMNS, markdown_table
from edgeslim.report.writer import write_report

__all__ = [
    "COLUMNS",
    "channels_per_layer",
    "deploy_snippet",
    "markdown_table",
    "per_layer_latency",
    "write_deploy_md",
    "write_report",
]
