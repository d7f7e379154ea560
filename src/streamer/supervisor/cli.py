"""`streamer`: the server's command line (`streamer serve` is the Procfile line).

Its imports are inside `main`: multiprocessing's fork server runs the parent's main module
again (this one, or the `streamer` script that imports it) before it preloads the roles'
modules. Imported here, the supervisor's code would be imported there too, for nothing.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    import setproctitle

    from streamer.runtime import config
    from streamer.runtime.logs import setup_logging
    from streamer.supervisor.supervisor import Supervisor, ports_taken

    parser = argparse.ArgumentParser(prog="streamer", description="streaming audio inference server")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="run the supervisor and every actor (default)")
    serve.add_argument("--port", type=int, help="HTTP/WebSocket port (overrides config)")
    serve.add_argument("--models", type=int, help="number of model actors (overrides config)")
    sub.add_parser("top", help="every process of a running server, live (see `streamer top --help`)",
                   add_help=False)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["top"]:
        from streamer.client.top import main as top  # a client of the HTTP API, not part of the supervisor

        return top(argv[1:])
    args = parser.parse_args(argv)
    overrides: dict[str, dict[str, int]] = {}
    if getattr(args, "port", None) is not None:
        overrides["server"] = {"port": args.port}
    if getattr(args, "models", None) is not None:
        overrides["actors"] = {"models": args.models}
    try:
        cfg = config.load(overrides=overrides)
    except (ValueError, OSError) as e:
        print(f"streamer: configuration error: {e}", file=sys.stderr)
        return 2
    setup_logging("supervisor", cfg.server.log_level)
    setproctitle.setproctitle("streamer: supervisor")
    taken = ports_taken(cfg)
    if taken:
        print(f"streamer: {', '.join(f'port {p} is in use' for p in taken)}: another server listens there "
              "(stop it, or set [server] port / grpc_port)", file=sys.stderr)
        return 2
    try:
        supervisor = Supervisor(cfg)
    except RuntimeError as e:  # a run directory that is not ours to use
        print(f"streamer: {e}", file=sys.stderr)
        return 2
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
