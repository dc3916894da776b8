"""Architectural compression (BK-SDM): block-removed student UNets built from a teacher by a recipe, and the
parameter, MAC and latency measurements that compare them."""
