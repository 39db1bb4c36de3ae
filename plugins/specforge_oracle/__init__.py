"""The ``oracle`` drafter, for measurement only: it proposes the target's own greedy continuation."""
