"""The streaming client script (`streamer-client`)."""
