"""A local fake of the Cloud TPU v2 API: a real gRPC server that the real ``TpuClient`` talks to on 127.0.0.1.

google-cloud-tpu ships only client code, so the service is registered here with generic method handlers under the
real service names (``google.cloud.tpu.v2.Tpu`` and ``google.longrunning.Operations``), using the library's own
request/response message classes to (de)serialise. What it implements is what the launcher uses: queued resources
(create, get, list, delete with ``force``), nodes (get, list, delete) and long-running operations (get).

It is a deterministic state machine driven by the client's polls, not by wall time, so tests never depend on timing.
Knobs (``FakeConfig``) inject what the launcher must survive: quota errors on create (RESOURCE_EXHAUSTED), slow
provisioning (N polls in WAITING_FOR_RESOURCES, then N in PROVISIONING), requests that end FAILED, slow deletion,
operations that are not done at once, and preemption (a node goes PREEMPTED and its queued resource SUSPENDED after
N polls of the node, or when ``preempt`` is called). ``allocated()`` says what is still held, for teardown
assertions.

A test fake (it lives in ``tests/``); run it standalone for manual experiments:
``python tests/tpu/fake_server.py --port 50051``, then ``CLIPA_TPU_ENDPOINT=127.0.0.1:50051 clipa tpu ...``.
"""

from __future__ import annotations

import argparse
import itertools
import re
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.cloud.tpu_v2.types import cloud_tpu
from google.longrunning import operations_pb2
from google.protobuf import any_pb2, empty_pb2, json_format

from planner.errors import ClipaError
from trainer.tpu.options import SliceInfo

SERVICE = "google.cloud.tpu.v2.Tpu"
OPERATIONS_SERVICE = "google.longrunning.Operations"

_PARENT = re.compile(r"^projects/([a-z][-a-z0-9]{4,28}[a-z0-9])/locations/([a-z]+(?:-[a-z]+)*[0-9]+-[a-z])$")
_ID = re.compile(r"^[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?$")


def hosts_for(accelerator_type: str) -> int | None:
    """Worker hosts of a slice (``SliceInfo`` owns them), or None for an accelerator type it does not know."""
    try:
        return SliceInfo.of_accelerator_type(accelerator_type).hosts
    except ClipaError:
        return None


@dataclass
class FakeConfig:
    quota_errors: int = 0  # the next N CreateQueuedResource calls fail with RESOURCE_EXHAUSTED
    waiting_polls: int = 0  # GetQueuedResource polls a new request spends in WAITING_FOR_RESOURCES
    provisioning_polls: int = 0  # ... then in PROVISIONING, before it is ACTIVE with a READY node
    failed_requests: int = 0  # the next N queued resources end FAILED after provisioning instead of ACTIVE
    deleting_polls: int = 0  # GetQueuedResource polls a deleted request spends in DELETING before it is gone
    lro_polls: int = 0  # GetOperation calls before an operation reports done (0: done when returned)
    # For the k-th node created (in order): preempt it after this many GetNode calls; None or missing: never.
    preempt_after_node_polls: list[int | None] = field(default_factory=list)


@dataclass
class _QueuedResource:
    qr: cloud_tpu.QueuedResource
    node_id: str
    node_template: cloud_tpu.Node
    waiting_left: int
    provisioning_left: int
    deleting_left: int = 0
    node_polls: int = 0
    preempt_after: int | None = None


@dataclass
class _Operation:
    polls_left: int  # GetOperation calls still to answer with done=False
    final: operations_pb2.Operation  # the finished operation, with its response


class FakeTpu:
    """The service's state and RPC implementations (thread-safe: gRPC calls arrive on a thread pool)."""

    def __init__(self, config: FakeConfig | None = None):
        self.config = config or FakeConfig()
        self._lock = threading.RLock()
        self._qrs: dict[str, _QueuedResource] = {}  # by full name
        self._nodes: dict[str, cloud_tpu.Node] = {}  # by full name
        self._ops: dict[str, _Operation] = {}
        self._op_ids = itertools.count(1)
        self._nodes_created = 0
        self.calls: list[tuple[str, dict[str, Any]]] = []  # every request received, as JSON-style dicts
        self.created: list[str] = []  # queued-resource names ever created
        self.deleted: list[str] = []  # queued-resource and node names deleted

    # --- test controls -------------------------------------------------------------------------------------------
    def preempt(self, node_id: str | None = None) -> str:
        """Preempt a READY node now (the only one, if ``node_id`` is None); returns its full name."""
        with self._lock:
            ready = [n for n, node in self._nodes.items() if node.state == cloud_tpu.Node.State.READY
                     and (node_id is None or n.endswith(f"/nodes/{node_id}"))]
            if len(ready) != 1:
                raise LookupError(f"expected one READY node to preempt, found {len(ready)}")
            self._preempt_locked(ready[0])
            return ready[0]

    def allocated(self) -> dict[str, list[str]]:
        """What is still held: queued resources and nodes (any state)."""
        with self._lock:
            return {"queued_resources": sorted(self._qrs), "nodes": sorted(self._nodes)}

    def methods_called(self) -> list[str]:
        with self._lock:
            return [m for m, _ in self.calls]

    # --- internals -----------------------------------------------------------------------------------------------
    def _record(self, method: str, request: Any) -> None:
        pb = type(request).pb(request) if hasattr(type(request), "pb") else request
        self.calls.append((method, json_format.MessageToDict(pb)))

    def _operation(self, parent: str, response_pb: Any) -> operations_pb2.Operation:
        """A long-running operation whose result is ``response_pb`` packed into an Any (done now, or after
        ``lro_polls`` GetOperation calls)."""
        name = f"{parent}/operations/operation-{next(self._op_ids)}"
        packed = any_pb2.Any()
        packed.Pack(response_pb)
        final = operations_pb2.Operation(name=name, done=True, response=packed)
        self._ops[name] = _Operation(polls_left=self.config.lro_polls, final=final)
        return final if self.config.lro_polls == 0 else operations_pb2.Operation(name=name, done=False)

    def _preempt_locked(self, node_name: str) -> None:
        node = self._nodes[node_name]
        node.state = cloud_tpu.Node.State.PREEMPTED
        node.health = cloud_tpu.Node.Health.UNHEALTHY_MAINTENANCE
        for rec in self._qrs.values():
            if rec.qr.name and node_name.endswith(f"/nodes/{rec.node_id}"):
                # A spot queued resource whose node is preempted is suspended (it must be deleted and recreated).
                rec.qr.state = cloud_tpu.QueuedResourceState(state=cloud_tpu.QueuedResourceState.State.SUSPENDED)

    def _advance(self, rec: _QueuedResource) -> None:
        """One poll's worth of progress for a queued resource."""
        S = cloud_tpu.QueuedResourceState.State
        state = rec.qr.state.state
        if state == S.DELETING:
            if rec.deleting_left > 0:
                rec.deleting_left -= 1
            else:
                self._remove(rec)
            return
        if state in (S.ACCEPTED, S.WAITING_FOR_RESOURCES):
            if rec.waiting_left > 0:
                rec.waiting_left -= 1
                rec.qr.state = cloud_tpu.QueuedResourceState(state=S.WAITING_FOR_RESOURCES)
                return
            state = S.PROVISIONING
            rec.qr.state = cloud_tpu.QueuedResourceState(state=S.PROVISIONING)
        if state == S.PROVISIONING:
            if rec.provisioning_left > 0:
                rec.provisioning_left -= 1
                return
            if self.config.failed_requests > 0:
                self.config.failed_requests -= 1
                rec.qr.state = cloud_tpu.QueuedResourceState(state=S.FAILED)
                return
            self._activate(rec)

    def _activate(self, rec: _QueuedResource) -> None:
        par = rec.qr.name.split("/queuedResources/")[0]
        node = cloud_tpu.Node.deserialize(cloud_tpu.Node.serialize(rec.node_template))
        node.name = f"{par}/nodes/{rec.node_id}"
        node.state = cloud_tpu.Node.State.READY
        node.health = cloud_tpu.Node.Health.HEALTHY
        node.queued_resource = rec.qr.name
        node.api_version = cloud_tpu.Node.ApiVersion.V2
        hosts = hosts_for(node.accelerator_type) or 1
        node.network_endpoints = [cloud_tpu.NetworkEndpoint(ip_address=f"10.130.0.{i + 2}", port=8470)
                                  for i in range(hosts)]
        node.create_time = _now()
        self._nodes[node.name] = node
        plan = self.config.preempt_after_node_polls
        rec.preempt_after = plan[self._nodes_created] if self._nodes_created < len(plan) else None
        self._nodes_created += 1
        rec.qr.state = cloud_tpu.QueuedResourceState(state=cloud_tpu.QueuedResourceState.State.ACTIVE)

    def _remove(self, rec: _QueuedResource) -> None:
        par = rec.qr.name.split("/queuedResources/")[0]
        node_name = f"{par}/nodes/{rec.node_id}"
        if self._nodes.pop(node_name, None) is not None:
            self.deleted.append(node_name)
        self._qrs.pop(rec.qr.name, None)
        self.deleted.append(rec.qr.name)

    # --- RPCs ----------------------------------------------------------------------------------------------------
    def CreateQueuedResource(self, request: cloud_tpu.CreateQueuedResourceRequest, context) -> Any:
        with self._lock:
            self._record("CreateQueuedResource", request)
            m = _PARENT.match(request.parent)
            if not m:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid parent {request.parent!r}")
            if not _ID.match(request.queued_resource_id):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"invalid queued_resource_id {request.queued_resource_id!r}")
            specs = list(request.queued_resource.tpu.node_spec)
            if len(specs) != 1 or not _ID.match(specs[0].node_id) or specs[0].parent != request.parent:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "exactly one node_spec with a valid node_id and the "
                              "request's parent is required")
            node = specs[0].node
            if hosts_for(node.accelerator_type) is None:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown accelerator type {node.accelerator_type!r}")
            if not node.runtime_version:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "runtime_version is required")
            if self.config.quota_errors > 0:
                self.config.quota_errors -= 1
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"Quota limit 'TPUsPerProjectPerZone' exceeded for {node.accelerator_type} in "
                              f"{m.group(2)}")
            name = f"{request.parent}/queuedResources/{request.queued_resource_id}"
            node_name = f"{request.parent}/nodes/{specs[0].node_id}"
            if name in self._qrs or node_name in self._nodes:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, f"{name} already exists")
            qr = cloud_tpu.QueuedResource.deserialize(cloud_tpu.QueuedResource.serialize(request.queued_resource))
            qr.name = name
            qr.create_time = _now()
            qr.state = cloud_tpu.QueuedResourceState(state=cloud_tpu.QueuedResourceState.State.ACCEPTED)
            self._qrs[name] = _QueuedResource(qr=qr, node_id=specs[0].node_id, node_template=node,
                                              waiting_left=self.config.waiting_polls,
                                              provisioning_left=self.config.provisioning_polls)
            self.created.append(name)
            return self._operation(request.parent, cloud_tpu.QueuedResource.pb(qr))

    def GetQueuedResource(self, request: cloud_tpu.GetQueuedResourceRequest, context) -> Any:
        with self._lock:
            self._record("GetQueuedResource", request)
            rec = self._qrs.get(request.name)
            if rec is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"{request.name} not found")
            self._advance(rec)
            if request.name not in self._qrs:
                context.abort(grpc.StatusCode.NOT_FOUND, f"{request.name} not found")
            return rec.qr

    def ListQueuedResources(self, request: cloud_tpu.ListQueuedResourcesRequest, context) -> Any:
        with self._lock:
            self._record("ListQueuedResources", request)
            items = [r.qr for n, r in sorted(self._qrs.items()) if n.startswith(request.parent + "/")]
            return cloud_tpu.ListQueuedResourcesResponse(queued_resources=items)

    def DeleteQueuedResource(self, request: cloud_tpu.DeleteQueuedResourceRequest, context) -> Any:
        with self._lock:
            self._record("DeleteQueuedResource", request)
            rec = self._qrs.get(request.name)
            if rec is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"{request.name} not found")
            par = request.name.split("/queuedResources/")[0]
            node_name = f"{par}/nodes/{rec.node_id}"
            if node_name in self._nodes and not request.force:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"{request.name} has a node; delete it first or pass force")
            if node_name in self._nodes:
                self._nodes[node_name].state = cloud_tpu.Node.State.DELETING
            rec.qr.state = cloud_tpu.QueuedResourceState(state=cloud_tpu.QueuedResourceState.State.DELETING)
            rec.deleting_left = self.config.deleting_polls
            if rec.deleting_left == 0:
                self._remove(rec)
            return self._operation(par, empty_pb2.Empty())

    def GetNode(self, request: cloud_tpu.GetNodeRequest, context) -> Any:
        with self._lock:
            self._record("GetNode", request)
            node = self._nodes.get(request.name)
            if node is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"{request.name} not found")
            for rec in self._qrs.values():
                if request.name.endswith(f"/nodes/{rec.node_id}") and node.state == cloud_tpu.Node.State.READY:
                    rec.node_polls += 1
                    if rec.preempt_after is not None and rec.node_polls > rec.preempt_after:
                        self._preempt_locked(request.name)
            return node

    def ListNodes(self, request: cloud_tpu.ListNodesRequest, context) -> Any:
        with self._lock:
            self._record("ListNodes", request)
            items = [n for name, n in sorted(self._nodes.items()) if name.startswith(request.parent + "/")]
            return cloud_tpu.ListNodesResponse(nodes=items)

    def DeleteNode(self, request: cloud_tpu.DeleteNodeRequest, context) -> Any:
        with self._lock:
            self._record("DeleteNode", request)
            if request.name not in self._nodes:
                context.abort(grpc.StatusCode.NOT_FOUND, f"{request.name} not found")
            if self._nodes[request.name].queued_resource:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                              "the node belongs to a queued resource; delete the queued resource")
            del self._nodes[request.name]
            self.deleted.append(request.name)
            return self._operation(request.name.split("/nodes/")[0], empty_pb2.Empty())

    def GetOperation(self, request: operations_pb2.GetOperationRequest, context) -> Any:
        with self._lock:
            self._record("GetOperation", request)
            rec = self._ops.get(request.name)
            if rec is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"{request.name} not found")
            if rec.polls_left > 1:
                rec.polls_left -= 1
                return operations_pb2.Operation(name=request.name, done=False)
            rec.polls_left = 0
            return rec.final

    # --- wiring --------------------------------------------------------------------------------------------------
    def handlers(self) -> list[grpc.GenericRpcHandler]:
        def unary(fn, req_cls, resp_serializer):
            return grpc.unary_unary_rpc_method_handler(fn, request_deserializer=req_cls.deserialize,
                                                       response_serializer=resp_serializer)

        op_out = operations_pb2.Operation.SerializeToString
        tpu = {
            "CreateQueuedResource": unary(self.CreateQueuedResource, cloud_tpu.CreateQueuedResourceRequest, op_out),
            "GetQueuedResource": unary(self.GetQueuedResource, cloud_tpu.GetQueuedResourceRequest,
                                       cloud_tpu.QueuedResource.serialize),
            "ListQueuedResources": unary(self.ListQueuedResources, cloud_tpu.ListQueuedResourcesRequest,
                                         cloud_tpu.ListQueuedResourcesResponse.serialize),
            "DeleteQueuedResource": unary(self.DeleteQueuedResource, cloud_tpu.DeleteQueuedResourceRequest, op_out),
            "GetNode": unary(self.GetNode, cloud_tpu.GetNodeRequest, cloud_tpu.Node.serialize),
            "ListNodes": unary(self.ListNodes, cloud_tpu.ListNodesRequest, cloud_tpu.ListNodesResponse.serialize),
            "DeleteNode": unary(self.DeleteNode, cloud_tpu.DeleteNodeRequest, op_out),
        }
        ops = {
            "GetOperation": grpc.unary_unary_rpc_method_handler(
                self.GetOperation, request_deserializer=operations_pb2.GetOperationRequest.FromString,
                response_serializer=op_out),
        }
        return [grpc.method_handlers_generic_handler(SERVICE, tpu),
                grpc.method_handlers_generic_handler(OPERATIONS_SERVICE, ops)]


def _now():
    from google.protobuf import timestamp_pb2

    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(time.time_ns())
    return ts


class FakeTpuServer:
    """The fake on a real gRPC server bound to 127.0.0.1 (an ephemeral port unless one is given)."""

    def __init__(self, config: FakeConfig | None = None, port: int = 0):
        self.fake = FakeTpu(config)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self._server.add_generic_rpc_handlers(self.fake.handlers())
        self.port = self._server.add_insecure_port(f"127.0.0.1:{port}")
        if self.port == 0:
            raise OSError(f"cannot bind 127.0.0.1:{port}")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> FakeTpuServer:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None).wait()

    def __enter__(self) -> FakeTpuServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Serve a fake Cloud TPU v2 API on 127.0.0.1 (for tests and demos).")
    p.add_argument("--port", type=int, default=50051)
    p.add_argument("--waiting-polls", type=int, default=2)
    p.add_argument("--provisioning-polls", type=int, default=2)
    p.add_argument("--quota-errors", type=int, default=0)
    args = p.parse_args(argv)
    cfg = FakeConfig(quota_errors=args.quota_errors, waiting_polls=args.waiting_polls,
                     provisioning_polls=args.provisioning_polls)
    server = FakeTpuServer(cfg, args.port).start()
    print(f"fake Cloud TPU API on {server.address} (Ctrl-C to stop)", flush=True)
    try:
        server._server.wait_for_termination()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
