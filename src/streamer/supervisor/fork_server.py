"""Imported first, and only, by multiprocessing's fork server (`children.py` preloads it): the
fork server ignores SIGTERM from then on.

A SIGTERM to the supervisor's whole process group (honcho's stop, `kill -- -PGID`) is for the
supervisor, which stops its children in order; the fork server is in that group, and dying there
it would leave the supervisor no way to fork a replacement. It does not outlive the group: its
pipe from the supervisor closes when the supervisor is gone. Its children take SIGTERM back
(`children.child_main`). Done here, inside the fork server, rather than by the supervisor
ignoring SIGTERM while it starts one: a signal sent to the supervisor in that moment would be
lost (multiprocessing unblocks SIGTERM as it starts its resource tracker, and other threads of
the supervisor never block it)."""

import signal

signal.signal(signal.SIGTERM, signal.SIG_IGN)
