"""Secrets never reach stdout, files or MLflow: the one owner of URI redaction and credentials.

A URI may carry credentials in its userinfo (``http://user:PASSWORD@host``) or in a query
parameter (``?password=...``, ``?token=...``). :func:`redact_uri` masks both; :func:`redact`
masks every URI inside a string or a nested config dict, so whatever we print, save
(``config.yaml``, manifests) or log to MLflow goes through it. :func:`tracking_credentials_to_env`
moves the userinfo of an http(s) tracking URI into the variables MLflow itself reads
(``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``), so the client never sees it in a URI
and cannot print it in its "View run" lines either.
"""

from __future__ import annotations

import os
import re
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

MASK = "***"
SECRET_PARAM = re.compile(r"pass|pwd|token|secret|key|auth|credential|signature|session", re.I)
_URI = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def redact_uri(uri: str) -> str:
    """``scheme://user:secret@host/x?token=t`` → ``scheme://user:***@host/x?token=***``.

    A userinfo without a password (``https://TOKEN@host``) may itself be the secret: all masked.
    Text-level (no parse and rebuild), so every other byte of the URI is kept as written.
    """
    uri = _USERINFO.sub(_mask_userinfo, uri, count=1)
    return _SECRET_QUERY.sub(rf"\1{MASK}", uri)


_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^/?#\s]*)@")
_SECRET_QUERY = re.compile(rf"([?&;][^=&#\s]*(?:{SECRET_PARAM.pattern})[^=&#\s]*=)[^&#\s]*", re.I)


def _mask_userinfo(match: re.Match[str]) -> str:
    user, colon, _ = match.group(2).partition(":")
    return f"{match.group(1)}{user}:{MASK}@" if colon else f"{match.group(1)}{MASK}@"


def redact(value: Any) -> Any:
    """Every URI in a string, or in the strings of a nested dict/list, redacted; other values as is."""
    if isinstance(value, str):
        return _URI.sub(lambda m: redact_uri(m.group(0)), value) if "://" in value else value
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact(v) for v in value)
    return value


def tracking_credentials_to_env(uri: str, env: MutableMapping[str, str] = os.environ) -> str:
    """Strip the userinfo of an http(s) MLflow URI into ``MLFLOW_TRACKING_USERNAME/PASSWORD``.

    Returns the URI without it. A masked password (a URI copied from a saved config) is not a
    credential: the one already in the environment stays.
    """
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return uri
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    if user and user != MASK:
        env["MLFLOW_TRACKING_USERNAME"] = unquote(user)
    if colon and password != MASK:
        env["MLFLOW_TRACKING_PASSWORD"] = unquote(password)
    return urlunsplit(parts._replace(netloc=hostport))
