"""The dock station: pulls sealed footage from docked cameras over the link, verifies, confirms."""
