"""``mmlens serve``: a local web page (Gradio) over the public Python API.

Importing this package does not import Gradio; :func:`serve` does.

>>> import mmlens
>>> mmlens.serve("demo")            # doctest: +SKIP  (opens http://127.0.0.1:7860)
"""

from __future__ import annotations

from typing import Any


def serve(subject: Any = "demo", host: str = "127.0.0.1", port: int = 7860, block: bool = True) -> Any:
    """Serve the page for ``subject`` (a :class:`mmlens.Subject`, ``"demo"``, a hub id or a folder).

    Binds ``host:port`` (loopback by default; other hosts print a warning; never a public share link).
    ``block=False`` returns the running server (call ``.close()`` on it) instead of serving until Ctrl-C.
    """
    from mmlens.web.server import serve as _serve

    return _serve(subject, host=host, port=port, block=block)


__all__ = ["serve"]
