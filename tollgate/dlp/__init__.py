"""dlp stage."""
