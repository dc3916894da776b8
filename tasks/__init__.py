"""Thin Prefect tasks: each wraps one pea/ function with retries, caching, logging and artifacts."""
