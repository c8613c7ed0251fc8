"""Recipes: the schema of every key, loading YAML with overrides, coercion, cross-checks, and the torch-free vocabulary
(loss names, data forms) they are checked against. Nothing here imports torch: a recipe is checked in a second."""
