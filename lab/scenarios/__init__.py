"""Scenarios: replay a hypothesis on its own lab, judge it against the seed, report."""
