"""The files a merge saved by hf-grasp holds beside the model: ``grasp_config.json``, its plan
(:class:`~hf_grasp.plan.plan.MergePlan`, which writes and reads it), and ``grasp_report.json``, its report."""

from __future__ import annotations

CONFIG_NAME = "grasp_config.json"
REPORT_NAME = "grasp_report.json"
