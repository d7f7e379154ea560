"""Process lifecycle: start every child, watch it, restart it, stop them all in order."""
