"""Choosing how to train: the strategy advisor and the freeze-depth search."""
