"""Lab package: models -> renderers -> backends -> faults/load/metrics -> scenarios -> CLI."""
