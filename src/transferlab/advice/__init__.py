"""Choosing how to train: the advisor's measurements, its rules, auto's plan, and the freeze-depth search."""
