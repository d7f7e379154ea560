"""How processes talk: ZeroMQ PUSH/PULL sockets, shared-memory buffers, message codecs."""
