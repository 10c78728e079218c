"""The stages of wdr-pipe: index readers, fetch, features, label statistics, and their runner."""
