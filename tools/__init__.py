"""Maintenance scripts run from the clone (not shipped in the wheel): ``python -m tools.NAME``."""
