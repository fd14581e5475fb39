"""The config API (aiohttp, :8080): the document over HTTP, with auth and history.

Public surface: :func:`create_app`, :class:`ApiSettings`, the token helpers
(:func:`new_token`, :func:`hash_token`, :func:`token_entry`) and
:func:`openapi_document`.  Serve with ``aiohttp.web.run_app(create_app(...), port=8080)``.
"""

from control.api.app import create_app
from control.api.auth import Principal, hash_token, new_token, token_entry
from control.api.openapi import openapi_document
from control.api.state import ApiSettings, StatusProvider

__all__ = [
    "ApiSettings",
    "Principal",
    "StatusProvider",
    "create_app",
    "hash_token",
    "new_token",
    "openapi_document",
    "token_entry",
]
