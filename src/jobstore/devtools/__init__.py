"""Tools for development and tests, outside the store's production import path."""
