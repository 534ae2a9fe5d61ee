"""exporting stage."""
