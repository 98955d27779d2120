"""mitm stage."""
