"""distill stage."""
