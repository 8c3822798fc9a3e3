"""`python -m app [--host H] [--port P] [--model-dir DIR]`: serve the models with uvicorn."""

from __future__ import annotations

import argparse

# Nothing heavy is imported at module level: preprocessing worker processes are started
# with "spawn", which re-imports this module in each of them.


def main(argv: list[str] | None = None) -> None:
    import os

    import uvicorn

    from app.main import create_app
    from app.settings import Settings

    settings = Settings()
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    parser.add_argument("--host", default=settings.host)
    parser.add_argument("--port", type=int, default=settings.port)
    parser.add_argument("--model-dir", default=None, help="overrides DIGITS_MODEL_DIR")
    parser.add_argument("--workers", type=int, default=settings.workers,
                        help="server processes (default DIGITS_WORKERS, 1)")
    args = parser.parse_args(argv)
    if args.model_dir:
        # Through the environment, so that every worker process sees it too.
        os.environ["DIGITS_MODEL_DIR"] = args.model_dir
        settings = Settings()  # validated, like the rest of the environment
    # One process gets the app object; several build their own from the environment.
    application = create_app(settings) if args.workers == 1 else "app.main:app"
    uvicorn.run(
        application, host=args.host, port=args.port, workers=args.workers,
        log_level=settings.log_level, loop="uvloop", http="httptools",
        # The app logs each request itself, with its model and image count.
        access_log=False,
        timeout_graceful_shutdown=30,
    )


if __name__ == "__main__":
    main()
