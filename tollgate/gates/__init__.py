"""gates stage."""
