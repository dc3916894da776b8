"""The toy world: a teacher that really draws, so that adapter quality is measured end to end on a CPU."""
