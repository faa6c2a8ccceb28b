"""Keeping credentials out of everything the TPU launcher writes: logs, printed requests, outcome files.

Two defences, both owned here. First, workers get an allow-listed environment (``worker_base_env``): nothing of the
launching machine's environment (where ``GOOGLE_APPLICATION_CREDENTIALS``, access tokens and API keys live) is
forwarded. Second, every line the launcher writes or prints passes ``Redactor.redact``, which masks the values of
secret-looking environment variables, the contents of the credentials file, and token shapes (OAuth access tokens,
PEM private keys, JSON ``private_key`` fields) wherever they come from, e.g. a trainer that prints its environment.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping

MASK = "[redacted]"

# Environment variable names whose values are secrets (matched as substrings of the upper-cased name).
_SECRET_NAME_PARTS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "API_KEY", "APIKEY", "PRIVATE_KEY",
                      "ACCESS_KEY", "AUTH")
# Token shapes that are secrets wherever they appear.
_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S), MASK),
    (re.compile(r"ya29\.[A-Za-z0-9._\-]+"), MASK),  # Google OAuth2 access tokens
    (re.compile(r"1//[A-Za-z0-9._\-]{20,}"), MASK),  # Google OAuth2 refresh tokens
    (re.compile(r"AIza[0-9A-Za-z_\-]{35}"), MASK),  # Google API keys
    (re.compile(r"(\"(?:private_key|private_key_id|client_secret|refresh_token|access_token)\"\s*:\s*)\"[^\"]*\""),
     rf'\1"{MASK}"'),
    (re.compile(r"(?i)(authorization:\s*bearer\s+)\S+"), rf"\1{MASK}"),
]
# Values shorter than this are not masked by value (masking "1" or "true" everywhere would garble the logs).
_MIN_SECRET_LEN = 8

# The only variables of the launching machine a local worker process inherits: enough to find Python and a home.
_ENV_ALLOW = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV", "XLA_FLAGS",
              "JAX_PLATFORMS")


def _is_secret_name(name: str) -> bool:
    upper = name.upper()
    return any(part in upper for part in _SECRET_NAME_PARTS)


def worker_base_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The allow-listed part of ``environ`` that a local worker process may see (never a secret-named variable)."""
    environ = os.environ if environ is None else environ
    return {k: environ[k] for k in _ENV_ALLOW if k in environ and not _is_secret_name(k)}


class Redactor:
    """Masks secrets in text. Built once from the environment at launch; cheap to apply to every log line."""

    def __init__(self, environ: Mapping[str, str] | None = None):
        environ = os.environ if environ is None else environ
        values: set[str] = set()
        for name, value in environ.items():
            if _is_secret_name(name) and len(value) >= _MIN_SECRET_LEN:
                values.add(value)
        # GOOGLE_APPLICATION_CREDENTIALS holds a path (not itself secret), but the file's secrets must never leak.
        values |= _credential_file_secrets(environ.get("GOOGLE_APPLICATION_CREDENTIALS"))
        # Longest first, so a secret that contains another is masked whole.
        self._values = sorted(values, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, MASK)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text


class LineRedactor:
    """Redacts a stream line by line, remembering when it is inside a PEM private-key block (which spans lines, so
    no single line shows the whole pattern)."""

    _BEGIN = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
    _END = re.compile(r"-----END [A-Z ]*PRIVATE KEY-----")

    def __init__(self, redactor: Redactor):
        self._redactor = redactor
        self._in_key = False

    def __call__(self, line: str) -> str:
        if self._in_key:
            if self._END.search(line):
                self._in_key = False
                return MASK + self._redactor.redact(self._END.split(line, 1)[1])
            return MASK
        begin = self._BEGIN.search(line)
        if begin and not self._END.search(line, begin.end()):
            self._in_key = True
            return self._redactor.redact(line[: begin.start()]) + MASK
        return self._redactor.redact(line)


def _credential_file_secrets(path: str | None) -> set[str]:
    """Every string value of a service-account / authorized-user JSON file that is long enough to be a secret."""
    if not path:
        return set()
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return set()
    out: set[str] = set()
    if isinstance(data, dict):
        for key, value in data.items():
            # The key file's e-mail, project and URLs are not secret; ids, keys and tokens are.
            if key in ("type", "project_id", "client_email", "auth_uri", "token_uri", "auth_provider_x509_cert_url",
                       "client_x509_cert_url", "universe_domain", "quota_project_id"):
                continue
            if isinstance(value, str) and len(value) >= _MIN_SECRET_LEN:
                out.add(value)
                # A PEM key is also masked line by line: a log may show its body without the BEGIN/END lines.
                if "PRIVATE KEY" in value:
                    out |= {ln.strip() for ln in value.replace("\\n", "\n").splitlines()
                            if len(ln.strip()) >= _MIN_SECRET_LEN and "PRIVATE KEY" not in ln}
    return out
