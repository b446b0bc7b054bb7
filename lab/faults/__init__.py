"""Faults: the incident's hypotheses as injectable, revertible changes to a running lab.

Call `apply` (`apply_to` for a lab by name), `revert`, `status` and `list_kinds` (lab.faults.engine);
`teardown` runs before a lab is removed.
"""

from lab.faults.engine import apply, apply_to, check, conntrack_reserved, list_kinds, revert, status, teardown

__all__ = ["apply", "apply_to", "check", "conntrack_reserved", "list_kinds", "revert", "status", "teardown"]
