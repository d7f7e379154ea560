"""The aiohttp front: WebSocket sessions in, ordered results out, the pipeline's only door."""
