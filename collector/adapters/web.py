"""Faust's aiohttp web server with none of Faust's own pages, behind collector's auth.

Faust mounts ``{"status": "OK"}`` at ``/`` before the app's own pages (aiohttp answers
with the first route that matches, so our ``/`` would never be reached), and serves
``/router/`` and ``/table/`` with no authentication at all: the second dumps raw
window state.  The query API covers what they offered, so none of them is mounted, and
every route goes through the app's ``web_middlewares`` (collector's auth, which
:func:`collector.web.register` puts there).
"""

from __future__ import annotations

from typing import Any, ClassVar

from faust.web.drivers.aiohttp import Web as AiohttpWeb


class Web(AiohttpWeb):
    default_blueprints: ClassVar[list[Any]] = []
    production_blueprints: ClassVar[list[Any]] = []
    debug_blueprints: ClassVar[list[Any]] = []
    optional_blueprints: ClassVar[list[Any]] = []

    def __init__(self, app: Any, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.web_app.middlewares.extend(app.web_middlewares)
