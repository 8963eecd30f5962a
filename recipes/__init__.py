"""Recipes: one YAML per (backbone x dataset) setting."""
