"""Prefect flows that compose tasks/ into the per-language pipeline (flow `pea`, deployment `train-language`)."""
