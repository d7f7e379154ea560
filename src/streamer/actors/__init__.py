"""The worker processes of the pipeline: decoder, segmenter, model actors and their models.

Actors depend on `transport` and `runtime`, never on the front or the supervisor.
"""
