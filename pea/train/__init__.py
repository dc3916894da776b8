"""Distributed KD training of one language's adapter on Ray Train (same code on a laptop and a cluster)."""
