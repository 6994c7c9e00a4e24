"""Faust's aiohttp web server, minus its placeholder index, so ``/`` is our web view.

Faust mounts ``{"status": "OK"}`` at ``/`` before the app's own pages, and aiohttp
answers with the first route that matches, so our ``/`` would never be reached.
"""

from __future__ import annotations

from typing import Any, ClassVar

from faust.web.drivers.aiohttp import Web as AiohttpWeb


class Web(AiohttpWeb):
    production_blueprints: ClassVar[list[Any]] = []
