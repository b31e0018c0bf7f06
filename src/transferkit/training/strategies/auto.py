"""``--strategy auto``, the default: the planner (transferkit.plan.auto) measures the data and this
machine and picks one of the other strategies; it keeps every option the user set."""

from transferkit.training.strategies.base import Strategy

# Its options are every option there is: options.py fills them in, since this package does not import it.
STRATEGY = Strategy("auto", "auto", "the recipe that measures best on this data within --time-budget", frozenset())
