"""dwops."""
