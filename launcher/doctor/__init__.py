"""`gangrun doctor` and the cheap checks every node runs at job start: one line per check, each with its fix."""
