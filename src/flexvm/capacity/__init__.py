"""Capacity: what a host can hold under its overcommit ratios, and what is left."""
