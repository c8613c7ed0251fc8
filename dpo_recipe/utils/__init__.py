"""Plumbing every stage uses: files that appear whole or not at all, where packaged files and the cache
live, a stopwatch."""
