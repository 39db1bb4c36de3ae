"""Confidence-scheduled verification (issue 15): DSpark-style acceptance estimates + a cost-aware verify length."""
