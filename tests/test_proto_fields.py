"""Field numbers of the wire contract, checked through the generated descriptors.

Each number here is pinned by upstream NetBird's proto; a wrong number silently
drops data against a real management server.
"""

from __future__ import annotations

import pytest
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool, message_factory

from nbgateway._proto import management_pb2 as mpb
from nbgateway._proto import proxy_service_pb2 as pb

FD = descriptor.FieldDescriptor


def _field(message, name: str):
    return message.DESCRIPTOR.fields_by_name[name]


@pytest.mark.parametrize(
    ("message", "name", "number"),
    [
        (pb.PathTargetOptions, "skip_tls_verify", 1),
        (pb.PathTargetOptions, "request_timeout", 2),
        (pb.PathTargetOptions, "path_rewrite", 3),
        (pb.PathTargetOptions, "custom_headers", 4),
        (pb.PathTargetOptions, "proxy_protocol", 5),
        (pb.PathTargetOptions, "session_idle_timeout", 6),
        (pb.PathTargetOptions, "direct_upstream", 7),
        (pb.PathTargetOptions, "middlewares", 11),
        (pb.PathTargetOptions, "disable_access_log", 13),
        (pb.ProxyMapping, "type", 1),
        (pb.ProxyMapping, "auth_token", 6),
        (pb.ProxyMapping, "mode", 10),
        (pb.ProxyMapping, "listen_port", 11),
        (pb.ProxyMapping, "access_restrictions", 12),
        (pb.ProxyMapping, "private", 13),
        (pb.ProxyCapabilities, "supports_custom_ports", 1),
        (pb.ProxyCapabilities, "require_subdomain", 2),
        (pb.ProxyCapabilities, "supports_crowdsec", 3),
        (pb.ProxyCapabilities, "private", 4),
        (pb.ProxyCapabilities, "supports_private_service", 5),
        (pb.ProxyCapabilities, "nbgw_l4_public_ports", 1001),
        (pb.NbgwL4Ports, "ranges", 1),
        (pb.NbgwL4Ports, "tls_port", 2),
        (pb.NbgwPortRange, "first", 1),
        (pb.NbgwPortRange, "last", 2),
        (pb.SendStatusUpdateRequest, "error_message", 5),
        (pb.SendStatusUpdateRequest, "inbound_listener", 50),
        (pb.SendStatusUpdateRequest, "nbgw_certificate", 100),
        (pb.ProxyMapping, "nbgw_assertion", 1001),
        (pb.ProxyMapping, "nbgw_client_ca_pem", 1005),
        (pb.ProxyMapping, "nbgw_client_cert_users", 1006),
        (pb.NbgwClientCertUser, "match", 1),
        (pb.NbgwClientCertUser, "group_names", 5),
        (pb.PathTargetOptions, "nbgw_balancing", 1001),
        (pb.NbgwBalancing, "health_status", 8),
        (pb.AccessLog, "nbgw_target", 1001),
        (pb.NbgwIdentityAssertion, "private_key", 3),
        (pb.NbgwIdentityAssertion, "next_from", 9),
        (pb.NbgwCertificateStatus, "ca_certificate_pem", 5),
        (pb.ProxyInboundListener, "tunnel_ip", 1),
        (pb.ProxyInboundListener, "https_port", 2),
        (pb.ProxyInboundListener, "http_port", 3),
        (pb.CreateProxyPeerRequest, "wireguard_public_key", 4),
        (pb.CreateProxyPeerRequest, "cluster", 5),
        (pb.ValidateTunnelPeerRequest, "tunnel_ip", 1),
        (pb.ValidateTunnelPeerRequest, "domain", 2),
        (pb.ValidateTunnelPeerResponse, "session_token", 5),
        (pb.ValidateTunnelPeerResponse, "peer_group_ids", 6),
        (pb.ValidateTunnelPeerResponse, "peer_group_names", 7),
        (pb.ValidateSessionResponse, "peer_group_ids", 5),
        (pb.ValidateSessionResponse, "peer_group_names", 6),
        (pb.SyncMappingsRequest, "init", 1),
        (pb.SyncMappingsRequest, "ack", 2),
        (pb.SyncMappingsResponse, "initial_sync_complete", 2),
        (pb.AccessLog, "metadata", 17),
        (pb.AuthenticateRequest, "header_auth", 5),
        (mpb.EncryptedMessage, "body", 2),
        (mpb.NetworkMap, "peerConfig", 2),
        (mpb.NetworkMap, "remotePeers", 3),
        (mpb.NetworkMap, "DNSConfig", 6),
        (mpb.NetworkMap, "FirewallRules", 8),
        (mpb.NetworkMap, "firewallRulesIsEmpty", 9),
        (mpb.SyncResponse, "NetworkMap", 5),
        (mpb.LoginRequest, "peerKeys", 4),
        (mpb.PeerSystemMeta, "capabilities", 18),
        (mpb.FirewallRule, "sourcePrefixes", 9),
        (mpb.CustomZone, "Records", 2),
        (mpb.SimpleRecord, "RData", 5),
    ],
)
def test_field_number(message, name: str, number: int) -> None:
    assert _field(message, name).number == number


def test_direct_upstream_is_bool_7_and_11_is_middlewares() -> None:
    direct = _field(pb.PathTargetOptions, "direct_upstream")
    assert (direct.number, direct.type) == (7, FD.TYPE_BOOL)
    by_number = pb.PathTargetOptions.DESCRIPTOR.fields_by_number
    assert by_number[11].name == "middlewares"
    assert by_number[11].message_type.full_name == "management.MiddlewareConfig"


def test_capabilities_have_explicit_presence() -> None:
    for field in pb.ProxyCapabilities.DESCRIPTOR.fields:
        assert field.has_presence, field.name
    caps = pb.ProxyCapabilities(private=False)
    assert caps.HasField("private")
    assert not caps.HasField("supports_crowdsec")


def test_l4_public_ports_extension_is_skipped_by_a_reader_without_it() -> None:
    field = _field(pb.ProxyCapabilities, "nbgw_l4_public_ports")
    assert field.number >= 1001 and field.type == FD.TYPE_MESSAGE
    caps = pb.ProxyCapabilities(supports_custom_ports=True, private=False)
    assert not caps.HasField("nbgw_l4_public_ports")  # absent = not advertised
    caps.nbgw_l4_public_ports.SetInParent()  # present, no range = no public L4 port
    assert caps.HasField("nbgw_l4_public_ports")
    caps.nbgw_l4_public_ports.ranges.add(first=1024, last=65535)
    caps.nbgw_l4_public_ports.tls_port = 443
    wire = caps.SerializeToString()
    # upstream's view: fields 1-5 only
    fdp = descriptor_pb2.FileDescriptorProto(name="upstream_caps.proto", package="upstream")
    fdp.syntax = "proto3"
    pb.ProxyCapabilities.DESCRIPTOR.CopyToProto(fdp.message_type.add())
    fields = fdp.message_type[0].field
    keep = [f for f in fields if f.number < 1001]
    del fields[:]
    fields.extend(keep)
    fdp.message_type[0].ClearField("oneof_decl")
    for f in fdp.message_type[0].field:
        f.ClearField("oneof_index")
        f.ClearField("proto3_optional")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    upstream = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("upstream.ProxyCapabilities"))()
    upstream.ParseFromString(wire)
    assert upstream.supports_custom_ports and not upstream.private
    again = pb.ProxyCapabilities.FromString(wire)
    assert [(r.first, r.last) for r in again.nbgw_l4_public_ports.ranges] == [(1024, 65535)]
    assert again.nbgw_l4_public_ports.tls_port == 443


def test_inbound_listener_is_optional_message_50() -> None:
    req = pb.SendStatusUpdateRequest(service_id="s")
    assert not req.HasField("inbound_listener")
    req.inbound_listener.tunnel_ip = "100.64.0.2"
    assert req.HasField("inbound_listener")
    # Tag for field 50, wire type 2 (length-delimited) = (50 << 3) | 2 = 402 = 0x92 0x03.
    assert b"\x92\x03" in req.SerializeToString()


def _upstream_create_proxy_peer_request():
    """CreateProxyPeerRequest as upstream declares it: fields 1-5, no extension."""
    fdp = descriptor_pb2.FileDescriptorProto(name="upstream_view.proto", package="upstream")
    fdp.syntax = "proto3"
    pb.CreateProxyPeerRequest.DESCRIPTOR.CopyToProto(fdp.message_type.add())
    fields = fdp.message_type[0].field
    keep = [f for f in fields if f.number < 50]
    del fields[:]
    fields.extend(keep)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("upstream.CreateProxyPeerRequest")
    )


def test_wireguard_endpoint_extension_is_skipped_by_a_reader_without_it() -> None:
    field = _field(pb.CreateProxyPeerRequest, "wireguard_endpoint")
    assert field.number >= 50 and field.type == FD.TYPE_STRING
    wire = pb.CreateProxyPeerRequest(
        service_id="svc",
        account_id="acc",
        token="t",
        wireguard_public_key="k",
        cluster="c",
        wireguard_endpoint="gw.example:51820",
    ).SerializeToString()
    upstream = _upstream_create_proxy_peer_request()()
    upstream.ParseFromString(wire)
    assert (upstream.service_id, upstream.account_id, upstream.token) == ("svc", "acc", "t")
    assert (upstream.wireguard_public_key, upstream.cluster) == ("k", "c")
    assert "wireguard_endpoint" not in upstream.DESCRIPTOR.fields_by_name
    # A message from an upstream sender parses with an empty extension.
    sent = _upstream_create_proxy_peer_request()(token="t", cluster="c")
    ours = pb.CreateProxyPeerRequest.FromString(sent.SerializeToString())
    assert ours.wireguard_endpoint == "" and ours.token == "t"


def test_enum_values() -> None:
    assert pb.UPDATE_TYPE_CREATED == 0
    assert pb.UPDATE_TYPE_MODIFIED == 1
    assert pb.UPDATE_TYPE_REMOVED == 2
    assert pb.PATH_REWRITE_PRESERVE == 1
    assert [pb.ProxyStatus.Name(i) for i in range(6)] == [
        "PROXY_STATUS_PENDING",
        "PROXY_STATUS_ACTIVE",
        "PROXY_STATUS_TUNNEL_NOT_CREATED",
        "PROXY_STATUS_CERTIFICATE_PENDING",
        "PROXY_STATUS_CERTIFICATE_FAILED",
        "PROXY_STATUS_ERROR",
    ]
    assert mpb.RuleProtocol.Value("TCP") == 2
    assert mpb.RuleDirection.Value("IN") == 0
    assert mpb.RuleAction.Value("ACCEPT") == 0


def test_service_method_paths_and_kinds() -> None:
    svc = pb.DESCRIPTOR.services_by_name["ProxyService"]
    assert svc.full_name == "management.ProxyService"
    sync = svc.methods_by_name["SyncMappings"]
    assert sync.client_streaming and sync.server_streaming
    gmu = svc.methods_by_name["GetMappingUpdate"]
    assert gmu.server_streaming and not gmu.client_streaming
    assert not svc.methods_by_name["ValidateTunnelPeer"].server_streaming
    msvc = mpb.DESCRIPTOR.services_by_name["ManagementService"]
    assert msvc.full_name == "management.ManagementService"
    assert msvc.methods_by_name["Sync"].server_streaming
    assert set(msvc.methods_by_name) >= {"Login", "Sync", "GetServerKey"}


def test_sync_response_skips_upstream_fields_we_do_not_declare() -> None:
    # SyncResponse field 8 (NetworkMapEnvelope) exists upstream but not in our
    # subset: it must be skipped without disturbing the fields we read.
    known = mpb.SyncResponse(NetworkMap=mpb.NetworkMap(Serial=7, remotePeersIsEmpty=True))
    envelope = b"\x42\x03\x0a\x01\x00"  # field 8, length 3: an opaque sub-message
    parsed = mpb.SyncResponse.FromString(known.SerializeToString() + envelope)
    assert parsed.NetworkMap.Serial == 7
    assert parsed.NetworkMap.remotePeersIsEmpty


def test_management_messages_roundtrip_peer_facing_fields() -> None:
    rule = mpb.FirewallRule(
        Direction=mpb.IN,
        Action=mpb.ACCEPT,
        Protocol=mpb.TCP,
        Port="443",
        sourcePrefixes=[bytes([100, 64, 0, 0, 16])],
    )
    zone = mpb.CustomZone(
        Domain="app.example.",
        Records=[
            mpb.SimpleRecord(Name="app.example.", Type=1, Class="IN", TTL=5, RData="100.64.0.2")
        ],
    )
    nm = mpb.NetworkMap(
        Serial=3,
        peerConfig=mpb.PeerConfig(address="100.64.0.2/16"),
        remotePeers=[mpb.RemotePeerConfig(wgPubKey="k=", allowedIps=["100.64.0.7/32"])],
        DNSConfig=mpb.DNSConfig(ServiceEnable=True, CustomZones=[zone]),
        FirewallRules=[rule],
    )
    again = mpb.NetworkMap.FromString(nm.SerializeToString())
    assert again == nm
    assert again.DNSConfig.CustomZones[0].Records[0].TTL == 5
