"""tls stage."""
