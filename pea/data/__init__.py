"""Data stages: harvest -> translate -> bucket -> cache features -> read, each resumable and idempotent."""
