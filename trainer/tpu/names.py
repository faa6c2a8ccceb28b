"""Validation of every name the TPU launcher puts into a cloud resource name, a path or a worker command.

Owns the rules, not the values: GCP resource ids (queued resources and nodes), project ids, zones, label values,
bucket URLs and worker-side relative paths. Each check returns the value unchanged or raises a ``ClipaError`` naming
the field, so a bad name stops the launcher before anything is created. The rules are deliberately stricter than
"whatever the API accepts": a value that passes here contains no shell metacharacter, no whitespace and no path
traversal, which is what makes it safe to pass through ``gcloud ... ssh --command`` (where the remote side is a
shell) even though every piece is also quoted.
"""

from __future__ import annotations

import re

from planner.errors import ClipaError

# Cloud TPU node and queued-resource ids follow the RFC 1035 label rule: a lowercase letter, then lowercase letters,
# digits or hyphens, not ending in a hyphen, at most 63 characters.
_RESOURCE_ID = re.compile(r"^[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?$")
# Project ids: 6-30 characters, lowercase letters, digits and hyphens, starting with a letter, not ending in a hyphen.
# (Legacy domain-scoped ids such as "example.com:proj" are not accepted: they need quoting in every gcloud call.)
_PROJECT_ID = re.compile(r"^[a-z][-a-z0-9]{4,28}[a-z0-9]$")
# Zones look like us-central1-a, europe-west4-b, us-east5-a.
_ZONE = re.compile(r"^[a-z]+(?:-[a-z]+)*[0-9]+-[a-z]$")
# Bucket names: 3-63 characters of lowercase letters, digits, '-', '_' and '.', starting and ending alphanumeric.
_BUCKET = re.compile(r"^[a-z0-9][-_.a-z0-9]{1,61}[a-z0-9]$")
# One path segment under a bucket or on a worker: no separators, no leading dot (so no '.', '..' or hidden files).
_SEGMENT = re.compile(r"^[A-Za-z0-9_][-A-Za-z0-9._]{0,127}$")
# Label values: lowercase letters, digits, '_' and '-', at most 63 characters.
_LABEL_VALUE = re.compile(r"^[-_a-z0-9]{0,63}$")
# Network and subnetwork: a bare name or a projects/.../networks/NAME style path made of resource ids.
_NETWORK = re.compile(r"^(?:projects/[a-z][-a-z0-9]{4,28}[a-z0-9]/(?:global|regions/[a-z]+(?:-[a-z]+)*[0-9]+)/"
                      r"(?:networks|subnetworks)/)?[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?$")
_EMAIL = re.compile(r"^[a-z0-9][-a-z0-9._]{0,63}@[a-z0-9][-a-z0-9.]{0,127}\.[a-z]{2,}$")
# What any single argument of a worker command may contain when it comes from a spec or an option.
_SAFE_ARG = re.compile(r"^[A-Za-z0-9_./:=@+,-]+$")


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def resource_id(value: str, field: str = "name") -> str:
    """A queued-resource or node id, exactly as given (no silent rewriting)."""
    if not isinstance(value, str) or not _RESOURCE_ID.match(value):
        raise ClipaError(
            field,
            f"{_show(value)} is not a valid Cloud TPU resource name: use 1-63 lowercase letters, digits or '-', "
            "starting with a letter and not ending with '-'",
        )
    return value


def resource_id_from_label(label: str, field: str = "name", prefix: str = "clipa-") -> str:
    """A resource id derived from a spec's name (which may hold capitals, '.' and '_'): lowercased, '.'/'_' -> '-'.

    The label must already be a safe name; anything else (slashes, spaces, shell characters) is rejected, never
    rewritten, so two different bad labels cannot collapse into one resource.
    """
    if not isinstance(label, str) or not _SEGMENT.match(label):
        raise ClipaError(field, f"{_show(label)} may only hold letters, digits, '.', '_' or '-'")
    body = re.sub(r"[._]", "-", label.lower()).strip("-")
    candidate = body if body.startswith(prefix) else prefix + body
    return resource_id(candidate[:63].rstrip("-"), field)


def attempt_id(base: str, attempt: int) -> str:
    """The resource id of one (re)queue attempt: ``base-aN``, shortened so it still fits 63 characters."""
    suffix = f"-a{attempt}"
    return resource_id(base[: 63 - len(suffix)].rstrip("-") + suffix, "name")


def project_id(value: str, field: str = "project") -> str:
    if not isinstance(value, str) or not _PROJECT_ID.match(value):
        raise ClipaError(field, f"{_show(value)} is not a valid GCP project id (6-30 lowercase letters, digits, '-')")
    return value


def zone(value: str, field: str = "zone") -> str:
    if not isinstance(value, str) or not _ZONE.match(value):
        raise ClipaError(field, f"{_show(value)} is not a zone name like 'us-central1-a'")
    return value


def label_value(value: str, field: str) -> str:
    if not isinstance(value, str) or not _LABEL_VALUE.match(value):
        raise ClipaError(field, f"{_show(value)} is not a valid label value")
    return value


def network(value: str, field: str = "network") -> str:
    if not isinstance(value, str) or not _NETWORK.match(value):
        raise ClipaError(field, f"{_show(value)} is not a network name or projects/P/global/networks/NAME path")
    return value


def service_account(value: str, field: str = "service_account") -> str:
    if not isinstance(value, str) or not _EMAIL.match(value):
        raise ClipaError(field, f"{_show(value)} is not a service account e-mail")
    return value


def path_segments(value: str, field: str) -> list[str]:
    """Split a relative path into checked segments: no '..', no '.', no empty parts, no absolute paths."""
    if not isinstance(value, str) or not value or value.startswith("/"):
        raise ClipaError(field, f"{_show(value)} must be a relative path")
    parts = value.split("/")
    for part in parts:
        if not _SEGMENT.match(part):
            raise ClipaError(field, f"{_show(value)}: path part {_show(part)} is not allowed (letters, digits, "
                             "'.', '_', '-'; no '..', spaces or shell characters)")
    return parts


def bucket_url(value: str, field: str = "bucket") -> str:
    """``gs://BUCKET[/PREFIX]`` for real runs, or ``file:///ABSOLUTE/PATH`` for runs whose workers are local processes.

    Returned without a trailing slash. Both forms end up in worker command lines and remote paths, so each path part
    is checked like a segment.
    """
    if not isinstance(value, str):
        raise ClipaError(field, f"{_show(value)} is not a bucket URL")
    text = value.rstrip("/")
    if text.startswith("gs://"):
        rest = text[len("gs://"):]
        bucket, _, prefix = rest.partition("/")
        if not _BUCKET.match(bucket) or ".." in bucket:
            raise ClipaError(field, f"{_show(value)}: {_show(bucket)} is not a valid bucket name")
        if prefix:
            path_segments(prefix, field)
        return text
    if text.startswith("file:///"):
        path_segments(text[len("file:///"):], field)
        return text
    raise ClipaError(field, f"{_show(value)} must be gs://BUCKET[/PREFIX] (or file:///PATH for local workers)")


def safe_arg(value: str, field: str) -> str:
    """An argument that goes into a worker command: printable, no whitespace, no shell metacharacters."""
    if not isinstance(value, str) or not _SAFE_ARG.match(value) or ".." in value.split("/"):
        raise ClipaError(field, f"{_show(value)} contains characters not allowed in a worker command")
    return value


def gs_parts(value: str, field: str = "bucket") -> tuple[str, str]:
    """``gs://BUCKET/PATH`` -> (``BUCKET``, ``PATH``), both checked (PATH may be empty)."""
    text = bucket_url(value, field)
    if not text.startswith("gs://"):
        raise ClipaError(field, f"{_show(value)} is not a gs:// URL")
    bucket, _, path = text[len("gs://"):].partition("/")
    return bucket, path
