"""The planning layer: measurements on the user's data (probes), the four-case advice, the planner within a time budget, comparisons. Imports train and core."""
