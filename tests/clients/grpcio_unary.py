"""Unary gRPC round trips from Python's grpcio (the C-core client) against a running Baton.

One persistent channel, calls one at a time, 20 unmeasured warm-up calls per row; prints a
Markdown table of p50/p99/max per RPC in milliseconds. Run through grpcio-unary.sh, which
builds the stubs and starts `baton up`; by hand:

    python3 grpcio_unary.py --target 127.0.0.1:50051 --token "$(baton token)" --stubs DIR

A row near 40 ms means a response waited for the client's delayed ACK (Nagle's algorithm on
the server's socket), the stall issue 11 measured before TCP_NODELAY.
"""

import argparse
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--target", required=True, help="host:port of Baton's gRPC listener")
    p.add_argument("--token", required=True, help="bearer token (baton token)")
    p.add_argument("--stubs", required=True, help="directory of the generated *_pb2 modules")
    p.add_argument("--calls", type=int, default=1000, help="measured calls per row")
    args = p.parse_args()
    sys.path.insert(0, args.stubs)

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from baton.v1 import services_pb2, services_pb2_grpc, types_pb2

    channel = grpc.insecure_channel(args.target)
    grpc.channel_ready_future(channel).result(timeout=30)
    meta = (("authorization", f"Bearer {args.token}"),)
    health = health_pb2_grpc.HealthStub(channel)
    decision = services_pb2_grpc.DecisionServiceStub(channel)
    tasks = services_pb2_grpc.TaskServiceStub(channel)

    def classify(text):
        req = services_pb2.ClassifyRequest(trigger=types_pb2.Trigger(text=text))
        return lambda: decision.Classify(req, metadata=meta)

    rows = [
        ("grpc.health.v1.Health/Check", lambda: health.Check(health_pb2.HealthCheckRequest(), metadata=meta)),
        ("DecisionService/ListRoles", lambda: decision.ListRoles(services_pb2.ListRolesRequest(), metadata=meta)),
        ("TaskService/ListTasks", lambda: tasks.ListTasks(services_pb2.ListTasksRequest(), metadata=meta)),
        # Decided by a rule: no forward pass.
        ("DecisionService/Classify (rules)", classify("Fix drift on production web servers")),
        # No rule matches: the embedding classifier runs (one MiniLM forward pass) when the
        # service has the weights; otherwise it waits for a human, also without a forward pass.
        # The row is labelled with the tier that answered.
        ("DecisionService/Classify (classifier)", classify("Bounce the nginx workers on web-03 and web-04 one after the other")),
    ]
    print(f"grpcio {grpc.__version__}, {args.calls} calls per row, one persistent channel")
    print(f"| {'RPC':<40} | {'p50':>10} | {'p99':>10} | {'max':>10} |")
    print(f"|{'-' * 42}|{'-' * 12}|{'-' * 12}|{'-' * 12}|")
    for name, call in rows:
        for _ in range(20):
            reply = call()
        if isinstance(reply, services_pb2.ClassifyResponse):
            # Say which tier answered, so a row's cost is read against what it ran.
            tier = types_pb2.DecisionTier.Name(reply.decision.tier)
            name = f"{name[:name.index('(')]}({tier.removeprefix('DECISION_TIER_').lower()})"
        times = []
        for _ in range(args.calls):
            t = time.perf_counter()
            call()
            times.append(time.perf_counter() - t)
        times.sort()
        pct = lambda q: times[min(len(times) - 1, int(q * len(times)))] * 1e3
        print(f"| {name:<40} | {pct(0.5):>7.3f} ms | {pct(0.99):>7.3f} ms | {times[-1] * 1e3:>7.3f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
