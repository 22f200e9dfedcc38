#!/usr/bin/env python3
"""A Python client of the quickP2P admin API, as a management system would write one.

The stubs are generated at run time from proto/grpc/proto with grpcio-tools (into a temporary
directory, nothing is committed), then the script runs the scenario of e2e/tests/admin.rs and
prints ONE JSON object with what it saw, for the Rust test to check:

  python3 e2e/python/admin_client.py --addr 127.0.0.1:50055 --read-token R --write-token W \
      --app app-a --kick APP/PEERHEX --query-key role --query-value relay- [--revoke app-b]

Needs: pip install grpcio grpcio-tools (.ci/run installs them).
"""

import argparse
import glob
import json
import os
import sys
import tempfile


def generate_stubs(proto_root, out_dir):
    from grpc_tools import protoc
    import grpc_tools

    files = sorted(glob.glob(os.path.join(proto_root, "quickp2p", "v1", "*.proto")))
    if not files:
        sys.exit(f"no .proto files under {proto_root}")
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    args = ["protoc", f"-I{proto_root}", f"-I{well_known}",
            f"--python_out={out_dir}", f"--grpc_python_out={out_dir}"]
    args += [os.path.relpath(f, proto_root) for f in files]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")
    sys.path.insert(0, out_dir)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--addr", required=True)
    p.add_argument("--read-token", required=True)
    p.add_argument("--write-token", required=True)
    p.add_argument("--app", required=True)
    p.add_argument("--kick", required=True, help="APP/PEERHEX of the peer to kick")
    p.add_argument("--query-key", required=True)
    p.add_argument("--query-value", required=True, help="a value prefix")
    p.add_argument("--revoke", default="", help="an application to revoke at the end")
    here = os.path.dirname(os.path.abspath(__file__))
    p.add_argument("--proto-root",
                   default=os.path.join(here, "..", "..", "proto", "grpc", "proto"))
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="qp-admin-stubs-") as out:
        generate_stubs(os.path.abspath(args.proto_root), out)
        run(args)


def run(args):
    import grpc
    from quickp2p.v1 import admin_pb2, admin_pb2_grpc, checkpoint_pb2, common_pb2, index_pb2

    channel = grpc.insecure_channel(args.addr)
    grpc.channel_ready_future(channel).result(timeout=10)
    admin = admin_pb2_grpc.AdminStub(channel)
    read = [("authorization", f"Bearer {args.read_token}")]
    write = [("authorization", f"Bearer {args.write_token}")]
    seen = {}

    def code_of(call):
        try:
            call()
            return "OK"
        except grpc.RpcError as e:
            return e.code().name

    # no token, a wrong token: no data
    seen["no_token"] = code_of(lambda: admin.ListPeers(admin_pb2.ListPeersRequest(), timeout=5))
    seen["wrong_token"] = code_of(lambda: admin.ListPeers(
        admin_pb2.ListPeersRequest(), timeout=5,
        metadata=[("authorization", "Bearer not-a-token-of-this-admin-api")]))

    # every peer of every application, two per page
    peers, cursor, pages = [], "", 0
    while True:
        resp = admin.ListPeers(admin_pb2.ListPeersRequest(
            page=common_pb2.Page(cursor=cursor, limit=2)), timeout=10, metadata=read)
        pages += 1
        for o in resp.peers:
            peers.append({"app": o.app_id.value, "peer": o.peer.value.hex(),
                          "gateway": o.session.gateway_id,
                          "nat_mapping": o.nat.mapping})
        cursor = resp.next_page.cursor
        if not cursor or pages > 100:
            break
    seen["peers"] = peers
    seen["peer_pages"] = pages

    # one application's peers on one gateway (search)
    if peers:
        gw = peers[0]["gateway"]
        resp = admin.ListPeers(admin_pb2.ListPeersRequest(
            search=admin_pb2.PeerSearch(app_id=common_pb2.AppId(value=args.app), gateway_id=gw)),
            timeout=10, metadata=read)
        seen["search_gateway"] = gw
        seen["search_found"] = [o.peer.value.hex() for o in resp.peers]

    # the index of the application
    resp = admin.QueryIndex(index_pb2.IndexQueryRequest(
        app_id=common_pb2.AppId(value=args.app),
        filter=index_pb2.AttributeFilter(key=args.query_key,
                                         mode=index_pb2.ATTRIBUTE_MATCH_PREFIX,
                                         value=args.query_value)),
        timeout=10, metadata=read)
    seen["index"] = [{"peer": r.peer.value.hex(),
                      "attributes": {a.key: a.value for a in r.attributes}}
                     for r in resp.records]

    # one peer in detail
    kick_app, kick_peer = args.kick.split("/")
    resp = admin.GetPeer(admin_pb2.GetPeerRequest(
        app_id=common_pb2.AppId(value=kick_app),
        peer=common_pb2.PeerId(value=bytes.fromhex(kick_peer))), timeout=10, metadata=read)
    seen["get_peer"] = {"gateway": resp.overview.session.gateway_id,
                        "nat_mapping": resp.nat_report.behaviour.mapping,
                        "attributes": {a.key: a.value for a in resp.record.attributes}}

    stats = admin.GetNetworkStats(admin_pb2.GetNetworkStatsRequest(), timeout=10,
                                  metadata=read).stats
    seen["stats"] = {
        "peers_online": stats.peers_online,
        "per_app": {c.app_id.value: c.online for c in stats.peers_per_app},
        "nat": {f"{b.nat.mapping}/{b.nat.filtering}": b.peers for b in stats.nat_histogram},
        "gateways": sorted(r.replica_id for rr in stats.replicas
                           if rr.role == common_pb2.SERVICE_ROLE_GATEWAY for r in rr.replicas),
    }

    # a broadcast to the application, fanned out by both gateways
    resp = admin.Broadcast(admin_pb2.BroadcastRequest(
        app_id=common_pb2.AppId(value=args.app), payload=b"maintenance at noon"),
        timeout=10, metadata=write)
    seen["broadcast"] = {"gateways": resp.gateways, "peers": resp.peers_reached,
                         "id_len": len(resp.broadcast_id)}

    kick = admin_pb2.KickPeerRequest(
        app_id=common_pb2.AppId(value=kick_app),
        peer=common_pb2.PeerId(value=bytes.fromhex(kick_peer)),
        message="maintenance: kicked by the Python admin client")
    # a read-only token may not write; the write token may
    seen["kick_read_only"] = code_of(lambda: admin.KickPeer(kick, timeout=10, metadata=read))
    seen["kick_no_token"] = code_of(lambda: admin.KickPeer(kick, timeout=10))
    resp = admin.KickPeer(kick, timeout=10, metadata=write)
    seen["kick"] = {"was_online": resp.was_online, "gateway": resp.gateway_id}

    # revoking another application ends its peers' sessions (they are kicked too)
    if args.revoke:
        resp = admin.RevokeApplication(checkpoint_pb2.RevokeApplicationRequest(
            id=common_pb2.AppId(value=args.revoke), reason="tenant closed"),
            timeout=20, metadata=write)
        seen["revoke"] = {"state": resp.application.state, "sessions_ended": resp.sessions_ended}

    events = admin.ListAuditEvents(admin_pb2.ListAuditEventsRequest(), timeout=10,
                                   metadata=read).events
    seen["audit"] = [{"actor": e.actor, "action": e.action, "target": e.target,
                      "success": e.success} for e in events]
    print(json.dumps(seen, sort_keys=True))


if __name__ == "__main__":
    main()
