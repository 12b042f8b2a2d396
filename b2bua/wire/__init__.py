"""Sans-IO wire formats: standard library only."""
