"""Evaluation of a candidate adapter (paper Sec. 4.2): MG and MC prompt sets, metrics, baselines, report."""
