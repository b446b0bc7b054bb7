"""Incidents as data: observed figures, CloudWatch imports, and the fit of lab runs against them."""
