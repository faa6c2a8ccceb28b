"""The launcher's narrow interface to the Cloud TPU API (``google.cloud.tpu_v2``), and the requests it sends.

Owns three things: building the exact request messages (queued resource create/get/delete, node get/list), so that
``--dry-run`` prints what a real run would send; ``TpuApi``, the handful of calls the launcher makes, with
NotFound mapped to ``None`` and long-running operations waited for; and ``connect``, which makes a real client
(application default credentials) or, for tests and emulators, a client on an insecure loopback channel: the one
way to point the commands at another endpoint is the environment variable ``CLIPA_TPU_ENDPOINT`` (HOST:PORT).

The client library is imported inside functions only: planning and local training never load it.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from planner.errors import ClipaError
from trainer.tpu.options import SliceInfo, TpuOptions

if TYPE_CHECKING:  # pragma: no cover - typing only
    from google.cloud import tpu_v2

# Queued-resource states, as names (the enum lives in the lazily imported client library).
QR_ACTIVE = "ACTIVE"
QR_WAITING = ("CREATING", "ACCEPTED", "WAITING_FOR_RESOURCES", "PROVISIONING", "STATE_UNSPECIFIED")
QR_LOST = ("FAILED", "SUSPENDING", "SUSPENDED")  # the slice is gone or never came: delete and requeue
NODE_LOST = ("PREEMPTED", "TERMINATED", "STOPPED", "STOPPING", "DELETING", "HIDDEN", "HIDING")
# A loopback API endpoint (a fake server, an emulator) instead of the real service: for tests and demos.
ENDPOINT_ENV = "CLIPA_TPU_ENDPOINT"


def parent(project: str, zone: str) -> str:
    return f"projects/{project}/locations/{zone}"


def message_to_dict(message: Any) -> dict[str, Any]:
    """A request or response as the JSON the REST API uses (camelCase; defaults left out)."""
    from google.protobuf import json_format

    pb = type(message).pb(message) if hasattr(type(message), "pb") else message
    return _sort_maps(json_format.MessageToDict(pb))


# Protobuf map fields iterate in no fixed order; sorted, the printed requests are the same on every run.
_MAP_FIELDS = ("labels", "metadata")


def _sort_maps(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: (dict(sorted(v.items())) if k in _MAP_FIELDS and isinstance(v, dict) else _sort_maps(v))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [_sort_maps(v) for v in obj]
    return obj


def build_node(slice_: SliceInfo, opts: TpuOptions, labels: Mapping[str, str]) -> tpu_v2.Node:
    from google.cloud import tpu_v2

    node = tpu_v2.Node(
        accelerator_type=slice_.accelerator_type,
        runtime_version=slice_.runtime_version,
        labels=dict(labels),
        # Spot is a property of the node (billing tier) and of the queued resource (queueing tier); set both.
        scheduling_config=tpu_v2.SchedulingConfig(spot=slice_.spot),
    )
    if opts.network or opts.subnetwork or opts.enable_external_ips is not None:
        node.network_config = tpu_v2.NetworkConfig(
            network=opts.network or "",
            subnetwork=opts.subnetwork or "",
            enable_external_ips=bool(opts.enable_external_ips),
        )
    if opts.service_account:
        node.service_account = tpu_v2.ServiceAccount(
            email=opts.service_account, scope=["https://www.googleapis.com/auth/cloud-platform"]
        )
    return node


def build_create_request(
    opts: TpuOptions, slice_: SliceInfo, qr_id: str, labels: Mapping[str, str]
) -> tpu_v2.CreateQueuedResourceRequest:
    """One queued resource holding one node of the slice; node id = queued-resource id."""
    from google.cloud import tpu_v2

    par = parent(opts.project, opts.zone)
    qr = tpu_v2.QueuedResource(
        tpu=tpu_v2.QueuedResource.Tpu(
            node_spec=[tpu_v2.QueuedResource.Tpu.NodeSpec(parent=par, node_id=qr_id,
                                                         node=build_node(slice_, opts, labels))]
        ),
        # Google gives up on the request itself when our provisioning deadline passes, so a crashed launcher
        # cannot leave a request queued for days.
        queueing_policy=tpu_v2.QueuedResource.QueueingPolicy(
            valid_until_duration={"seconds": int(opts.provision_timeout_s)}
        ),
    )
    if slice_.spot:
        qr.spot = tpu_v2.QueuedResource.Spot()
    else:
        qr.guaranteed = tpu_v2.QueuedResource.Guaranteed()
    return tpu_v2.CreateQueuedResourceRequest(parent=par, queued_resource_id=qr_id, queued_resource=qr)


def build_get_request(opts: TpuOptions, qr_id: str) -> tpu_v2.GetQueuedResourceRequest:
    from google.cloud import tpu_v2

    return tpu_v2.GetQueuedResourceRequest(name=f"{parent(opts.project, opts.zone)}/queuedResources/{qr_id}")


def build_get_node_request(opts: TpuOptions, node_id: str) -> tpu_v2.GetNodeRequest:
    from google.cloud import tpu_v2

    return tpu_v2.GetNodeRequest(name=f"{parent(opts.project, opts.zone)}/nodes/{node_id}")


def build_delete_request(opts: TpuOptions, qr_id: str) -> tpu_v2.DeleteQueuedResourceRequest:
    from google.cloud import tpu_v2

    # force=True deletes the node with its queued resource; without it the API refuses while a node exists.
    return tpu_v2.DeleteQueuedResourceRequest(
        name=f"{parent(opts.project, opts.zone)}/queuedResources/{qr_id}", force=True
    )


def state_name(obj: Any) -> str:
    """The state of a QueuedResource (``.state.state``) or a Node (``.state``) as its enum name."""
    st = obj.state.state if hasattr(obj.state, "state") else obj.state
    return getattr(st, "name", str(st))


class TpuApiError(ClipaError):
    """A Cloud TPU API call failed in a way that retrying will not fix (permission, invalid request, ...)."""

    def __init__(self, message: str):
        super().__init__("tpu", message)


def is_retryable(exc: BaseException) -> bool:
    """Errors worth retrying with backoff: quota/capacity and transient service errors."""
    from google.api_core import exceptions as gexc

    return isinstance(exc, (gexc.ResourceExhausted, gexc.ServiceUnavailable, gexc.DeadlineExceeded,
                            gexc.InternalServerError, gexc.Aborted, gexc.TooManyRequests))


def describe_error(exc: BaseException) -> str:
    """One line: the gRPC status and the server's message (never request metadata, which may carry tokens)."""
    code = getattr(exc, "grpc_status_code", None)
    code_name = getattr(code, "name", None) or type(exc).__name__
    message = getattr(exc, "message", None) or str(exc)
    return f"{code_name}: {message}".splitlines()[0]


class TpuApi:
    """The calls the launcher makes, on one project and zone. Every call has a timeout; NotFound -> None."""

    def __init__(self, client: Any, project: str, zone: str, timeout_s: float = 60.0,
                 lro_poll_initial_s: float = 1.0, lro_poll_max_s: float = 20.0):
        self.client = client
        self.project = project
        self.zone = zone
        self.timeout_s = timeout_s
        self._lro_initial = lro_poll_initial_s
        self._lro_max = lro_poll_max_s

    @property
    def parent(self) -> str:
        return parent(self.project, self.zone)

    def _wait(self, op: Any) -> Any:
        from google.api_core.future.polling import DEFAULT_POLLING

        polling = DEFAULT_POLLING.with_delay(initial=self._lro_initial, maximum=self._lro_max)
        return op.result(timeout=self.timeout_s, polling=polling)

    def create_queued_resource(self, request: Any) -> Any:
        op = self.client.create_queued_resource(request=request, timeout=self.timeout_s)
        return self._wait(op)

    def get_queued_resource(self, qr_id: str) -> Any | None:
        from google.api_core import exceptions as gexc

        try:
            return self.client.get_queued_resource(name=f"{self.parent}/queuedResources/{qr_id}",
                                                   timeout=self.timeout_s)
        except gexc.NotFound:
            return None

    def delete_queued_resource(self, request: Any) -> bool:
        """Delete (forced); False if it was already gone."""
        from google.api_core import exceptions as gexc

        try:
            op = self.client.delete_queued_resource(request=request, timeout=self.timeout_s)
        except gexc.NotFound:
            return False
        self._wait(op)
        return True

    def get_node(self, node_id: str) -> Any | None:
        from google.api_core import exceptions as gexc

        try:
            return self.client.get_node(name=f"{self.parent}/nodes/{node_id}", timeout=self.timeout_s)
        except gexc.NotFound:
            return None

    def delete_node(self, node_id: str) -> bool:
        from google.api_core import exceptions as gexc

        try:
            op = self.client.delete_node(name=f"{self.parent}/nodes/{node_id}", timeout=self.timeout_s)
        except gexc.NotFound:
            return False
        self._wait(op)
        return True

    def list_nodes(self) -> list[Any]:
        return list(self.client.list_nodes(parent=self.parent, timeout=self.timeout_s))

    def list_queued_resources(self) -> list[Any]:
        return list(self.client.list_queued_resources(parent=self.parent, timeout=self.timeout_s))


def _check_loopback(endpoint: str) -> str:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit():
        raise ClipaError("endpoint", f"{endpoint!r} must be HOST:PORT")
    host = host.strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        # The insecure channel sends requests in clear text without credentials: only ever to this machine.
        raise ClipaError("endpoint", f"{endpoint!r}: an insecure endpoint must be on this machine (127.0.0.1)")
    return endpoint


def connect(project: str, zone: str, endpoint: str | None = None, timeout_s: float = 60.0,
            lro_poll_initial_s: float = 1.0, lro_poll_max_s: float = 20.0) -> TpuApi:
    """A ``TpuApi`` on the real service (application default credentials), or on ``endpoint`` (default: the
    ``CLIPA_TPU_ENDPOINT`` variable; loopback only) over an insecure gRPC channel with anonymous credentials: the
    local fake server or an emulator."""
    from google.cloud import tpu_v2

    endpoint = endpoint or os.environ.get(ENDPOINT_ENV) or None
    if endpoint is None:
        client = tpu_v2.TpuClient()
    else:
        import grpc
        from google.auth.credentials import AnonymousCredentials
        from google.cloud.tpu_v2.services.tpu.transports import TpuGrpcTransport

        channel = grpc.insecure_channel(_check_loopback(endpoint))
        client = tpu_v2.TpuClient(transport=TpuGrpcTransport(channel=channel, credentials=AnonymousCredentials()))
    return TpuApi(client, project, zone, timeout_s, lro_poll_initial_s, lro_poll_max_s)
