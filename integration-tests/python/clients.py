#!/usr/bin/env python3
"""Clients in another language against a running manager.

1. Stubs generated from proto/ with grpcio-tools create, get and list tasks,
   and see INVALID_ARGUMENT name the field at fault.
2. A reflection client (grpcio-reflection, v1alpha) lists and describes the
   services with no proto files at all, as grpcurl does.

Usage: clients.py HOST:PORT RUN_LABEL. Exits non-zero with a message on the
first failed check.
"""
import os
import sys
import tempfile

import grpc
import grpc_tools
from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from grpc_tools import protoc

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PROTOS = ["task.proto", "node.proto", "control.proto", "agent.proto"]


def check(cond, what):
    if not cond:
        sys.exit(f"python clients: FAILED: {what}")


def generate(out):
    wkt = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{os.path.join(REPO, 'proto')}",
        f"-I{wkt}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
    ] + [f"minkube/v1/{p}" for p in PROTOS]
    check(protoc.main(args) == 0, "protoc could not compile proto/minkube/v1")
    sys.path.insert(0, out)


def generated_stubs(channel, run_label):
    from minkube.v1 import control_pb2, control_pb2_grpc, task_pb2

    stub = control_pb2_grpc.ControlServiceStub(channel)
    spec = task_pb2.TaskSpec(
        name="py-client",
        image="minkube-python-test:absent",
        memory_mb=16,
        command=["true"],
        labels={"minkube-test-run": run_label},
    )
    created = stub.CreateTask(control_pb2.CreateTaskRequest(spec=spec), timeout=10).task
    check(len(created.id) == 36, f"created task has a UUID id: {created.id!r}")
    check(created.status.state == task_pb2.TASK_STATE_PENDING, "new task is PENDING (no agent)")

    got = stub.GetTask(control_pb2.GetTaskRequest(id=created.id), timeout=10)
    check(got.task.spec.name == "py-client", "GetTask returns the spec")
    check(len(got.events) >= 1, "GetTask returns the event history")

    page = stub.ListTasks(control_pb2.ListTasksRequest(page_size=10), timeout=10)
    check(created.id in [t.id for t in page.tasks], "ListTasks lists the task")
    check(page.total_count >= 1, "ListTasks counts it")

    bad = task_pb2.TaskSpec(name="bad", image="x", memory_mb=4)
    try:
        stub.CreateTask(control_pb2.CreateTaskRequest(spec=bad), timeout=10)
        check(False, "memory_mb 4 is refused")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.INVALID_ARGUMENT, f"INVALID_ARGUMENT, got {e.code()}")
        check("spec.memory_mb" in e.details(), f"the message names the field: {e.details()!r}")


def reflection(channel):
    db = ProtoReflectionDescriptorDatabase(channel)
    services = set(db.get_services())
    for name in ("minkube.v1.ControlService", "minkube.v1.AgentService", "grpc.health.v1.Health"):
        check(name in services, f"reflection lists {name} (got {sorted(services)})")
    pool = descriptor_pool.DescriptorPool(db)
    control = pool.FindServiceByName("minkube.v1.ControlService")
    methods = {m.name for m in control.methods}
    check({"CreateTask", "GetTask", "ListTasks", "StopTask"} <= methods, f"methods: {methods}")
    spec = pool.FindMessageTypeByName("minkube.v1.TaskSpec")
    check("memory_mb" in spec.fields_by_name, "TaskSpec is described with its fields")


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: clients.py HOST:PORT RUN_LABEL")
    addr, run_label = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory() as out:
        generate(out)
        with grpc.insecure_channel(addr) as channel:
            grpc.channel_ready_future(channel).result(timeout=10)
            generated_stubs(channel, run_label)
            reflection(channel)
    print("python clients: ok")


if __name__ == "__main__":
    main()
