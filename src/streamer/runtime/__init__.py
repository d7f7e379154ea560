"""What every process of the group sets up for itself: configuration, logging, identity."""
