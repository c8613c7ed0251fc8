"""Preference data: the built-in Japanese generator, the published forms rows arrive in, lint, sources and mixtures,
tokenisation into TRL's ids."""
