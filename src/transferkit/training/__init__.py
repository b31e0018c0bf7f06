"""The training layer: the options of a run and its strategies (heads on features, end to end on Lightning), the freeze schedule. Imports only core."""
