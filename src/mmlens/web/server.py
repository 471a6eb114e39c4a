"""Start the page: check host and port before loading the model, bind loopback by default, never share."""

from __future__ import annotations

import atexit
import ipaddress
import logging
import os
import shutil
import socket
import sys
import tempfile
from typing import Any

import mmlens

MAX_UPLOAD = "64mb"        # Gradio refuses bigger uploads; the API's byte and pixel limits apply after that
CONCURRENCY = 1            # one model, shared hooks: model work runs one request at a time, the rest queue
QUEUE_SIZE = 256

log = logging.getLogger("mmlens.web")


def check_host(host: str) -> None:
    """InputError unless ``host`` is an IP address or a name that resolves."""
    if not isinstance(host, str) or not host.strip() or any(c.isspace() for c in host):
        raise mmlens.InputError(f"--host {host!r} is not a host name or IP address: pass e.g. 127.0.0.1")
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    try:
        socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError):
        raise mmlens.InputError(f"--host {host!r} does not resolve to an address: pass e.g. 127.0.0.1") from None


def is_loopback(host: str) -> bool:
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
    except (socket.gaierror, ValueError, UnicodeError):
        return False


def check_port(host: str, port: Any) -> int:
    """InputError unless ``port`` is an integer 1..65535 that is free on ``host``."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise mmlens.InputError(f"--port {port!r} is not a port number: pass an integer from 1 to 65535")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as err:
            raise mmlens.InputError(f"--port {port} is not available on {host} ({err.strerror or err}): pass "
                                    "another port, e.g. --port 7861") from None
    return port


def serve(subject: Any = "demo", host: str = "127.0.0.1", port: int = 7860, block: bool = True) -> Any:
    """Check host/port, load the model once, build the page and serve it (see :func:`mmlens.web.serve`)."""
    check_host(host)
    check_port(host, port)
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise mmlens.MMLensError("`mmlens serve` needs Gradio: pip install 'mmlens[web]'") from None
    if not is_loopback(host):
        print(f"warning: serving on {host}, which other machines can reach: the page has no login; use the "
              "default 127.0.0.1 unless you mean it", file=sys.stderr)
    spec = subject if isinstance(subject, str) else getattr(subject, "model_id", "model")
    lm = mmlens.load(subject) if isinstance(subject, str) else subject
    tmp = tempfile.mkdtemp(prefix="mmlens-serve-")
    os.environ["GRADIO_TEMP_DIR"] = os.path.join(tmp, "uploads")  # uploads land in our folder, removed at exit
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    atexit.register(shutil.rmtree, tmp, True)
    from mmlens.web.app import build, theme
    from mmlens.web.render import CSS
    from mmlens.web.session import Context
    from mmlens.web.video import CSS as VIDEO_CSS

    page = build(Context(lm, spec, tmp))
    page.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)
    page.launch(server_name=host, server_port=port, share=False, inbrowser=False, show_error=False, quiet=True,
                max_file_size=MAX_UPLOAD, prevent_thread_lock=True, ssr_mode=False,
                theme=theme(), css=CSS + VIDEO_CSS, footer_links=[])
    page.mmlens_tmp = tmp  # type: ignore[attr-defined]
    print(f"mmlens: serving {lm.model_id} at http://{host}:{port}  (Ctrl-C to stop)", file=sys.stderr)
    if not block:
        return page
    try:
        page.block_thread()
    finally:
        page.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return page
