"""`transferlab serve`: models behind an HTTP API and a web page (uvicorn + FastAPI, see transferlab.serve)."""
from __future__ import annotations

import ipaddress
import os
import sys

from ..core.errors import TransferlabError
from .commands import tta_setting

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def cmd_serve(args) -> int:
    """Load the models, warn about an open bind without a token, and serve until interrupted."""
    try:
        import uvicorn

        from ..serve.app import create_app
    except ImportError as e:
        raise TransferlabError(f"serving needs the serve extra: FastAPI, uvicorn, python-multipart, "
                               f"fastapi-offline, prometheus-client ({e.name} is missing): "
                               "pip install 'transferlab[serve]'") from None
    if not args.models and not args.runs:
        raise TransferlabError("serve needs a model (registry name or run folder) or --runs DIR")
    if args.runs and not os.path.isdir(args.runs):
        raise TransferlabError(f"--runs {args.runs}: not a folder")
    token = args.token or os.environ.get("TRANSFERLAB_TOKEN") or None
    if not is_loopback(args.host) and not token:
        print(f"transferlab: warning: serving on {args.host} without --token: anyone who can reach this "
              "machine can use the models", file=sys.stderr)
    app = create_app(args.models, token=token, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                     max_queue=args.max_queue, max_upload_mb=args.max_upload_mb, max_pixels=args.max_pixels,
                     max_images=args.max_images, cors_origins=args.cors or (), backend=args.backend,
                     max_drop=args.max_drop, runs_dir=args.runs, tta=tta_setting(args))
    names = ", ".join([f"{m.name} ({m.kind})" for m in app.state.models.values()] +
                      ([f"the runs in {args.runs}"] if args.runs else []))
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"serving {names} at http://{host}:{args.port}/ (API docs: /docs)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0
