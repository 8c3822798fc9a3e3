"""`python -m app [--host H] [--port P] [--model-dir DIR]`: serve the models with uvicorn."""

from __future__ import annotations

import argparse

# Nothing heavy is imported at module level: preprocessing worker processes are started
# with "spawn", which re-imports this module in each of them.


def main(argv: list[str] | None = None) -> None:
    import os

    import uvicorn

    from app.connections import ConnectionLimits, protocol_for
    from app.settings import Settings

    settings = Settings()
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    parser.add_argument("--host", default=settings.host)
    parser.add_argument("--port", type=int, default=settings.port)
    parser.add_argument("--model-dir", default=None, help="overrides DIGITS_MODEL_DIR")
    parser.add_argument("--workers", type=int, default=settings.workers,
                        help="server processes (default DIGITS_WORKERS, 1)")
    args = parser.parse_args(argv)
    # Through the environment, so that every server process sees them too.
    if args.model_dir:
        os.environ["DIGITS_MODEL_DIR"] = args.model_dir
    os.environ["DIGITS_WORKERS"] = str(args.workers)
    settings = Settings()  # validated, like the rest of the environment
    if settings.grpc_port:
        from app.processes import check_port_free

        # Every server process binds it with SO_REUSEPORT, which would share it silently
        # with anything else listening there.
        check_port_free(settings.host, settings.grpc_port)
    options = dict(
        host=args.host, port=args.port, log_level=settings.log_level,
        loop="uvloop", http=protocol_for(ConnectionLimits(
            header_timeout_s=settings.header_timeout_s, body_timeout_s=settings.body_timeout_s,
            max_header_bytes=settings.max_header_bytes,
            max_connections=settings.max_connections,
            max_body_bytes=settings.max_upload_bytes,
            max_buffered_body_bytes=settings.max_buffered_body_bytes,
            send_timeout_s=settings.send_timeout_s)),
        access_log=False,  # the app logs each request itself, with its model and image count
        # The app uses neither the client's address nor absolute URLs, so rewriting them
        # from X-Forwarded-* headers on every request (uvicorn's default) is wasted work.
        proxy_headers=False,
        timeout_graceful_shutdown=settings.graceful_shutdown_s,
    )
    if args.workers == 1:
        from app.main import create_app  # TensorFlow, only in a process that serves

        uvicorn.run(create_app(settings), **options)
    else:
        # The supervisor imports no TensorFlow: it serves nothing (60 MB, not 700).
        from app.observability import configure_logging
        from app.processes import serve_processes

        configure_logging(settings.log_level)  # for the supervisor's own messages
        # Each process builds its own app from the environment.
        serve_processes(uvicorn.Config("app.main:app", **options), args.workers,
                        pin=settings.pin_processes)


if __name__ == "__main__":
    main()
