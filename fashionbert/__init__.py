"""fashionbert package."""
