"""The sans-IO target pools: choice, passive ejection, back-off, active state."""

from __future__ import annotations

from google.protobuf import duration_pb2

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.proxy.balance import (
    Balancers,
    TargetPool,
    counts_against_target,
    never_reached_upstream,
)
from nbgateway.routes.balancing import Balancing, balancing_of
from nbgateway.routes.paths import PathRouter, parse_target


def route(*targets: str, balancing: pb.NbgwBalancing | None = None):
    opts = pb.PathTargetOptions()
    if balancing is not None:
        opts.nbgw_balancing.CopyFrom(balancing)
    return PathRouter([parse_target("/", t, opts) for t in targets]).match("/")


def three(**kw):
    return route("http://a:1/", "http://b:1/", "http://c:1/",
                 balancing=pb.NbgwBalancing(**kw) if kw else None)


def picks(pool: TargetPool, n: int, now: float = 0.0) -> list[str]:
    out = []
    for _ in range(n):
        st = pool.pick(now)
        out.append(st.route.host)
    return out


def test_round_robin_in_mapping_order():
    pool = TargetPool.of("svc", three())
    assert picks(pool, 6) == ["a", "b", "c", "a", "b", "c"]


def test_least_conn_prefers_fewest_in_flight_then_rotation():
    pool = TargetPool.of("svc", three(policy="least_conn"))
    a = pool.pick(0)
    pool.started(a)
    b = pool.pick(0)
    pool.started(b)
    assert (a.route.host, b.route.host) == ("a", "b")
    c = pool.pick(0)
    assert c.route.host == "c"
    pool.started(c)
    pool.ended(b)
    assert pool.pick(0).route.host == "b"  # b has 0 in flight, a and c 1


def test_consecutive_failures_eject_then_backoff_doubles_and_probation():
    pool = TargetPool.of("svc", three(max_failures=2, backoff=duration_pb2.Duration(seconds=5)))
    a = pool.states[0]
    assert not pool.failed(a, 0)
    pool.succeeded(a)  # a success resets the count
    assert not pool.failed(a, 1)
    assert pool.failed(a, 2)  # second consecutive: ejected for 5 s
    assert a.ejected_until == 7
    assert picks(pool, 4, now=3) == ["b", "c", "b", "c"]
    assert a.ejections_total == 1 and a.failures_total == 3
    # back after the back-off, on probation: one failure ejects again, twice as long
    assert "a" in picks(pool, 3, now=7)
    assert pool.failed(a, 7.5)
    assert a.ejected_until == 17.5
    assert "a" not in picks(pool, 4, now=17)
    # back again; a success re-admits it for good and resets the back-off
    assert "a" in picks(pool, 3, now=17.5)
    pool.succeeded(a)
    assert not a.probation and a.ejections == 0
    assert not pool.failed(a, 18)  # threshold applies again
    assert pool.failed(a, 18)
    assert a.ejected_until == 23


def test_backoff_is_capped():
    pool = TargetPool.of("svc", three(max_failures=1, backoff=duration_pb2.Duration(seconds=10),
                                      max_backoff=duration_pb2.Duration(seconds=25)))
    a = pool.states[0]
    now = 0.0
    spans = []
    for _ in range(4):
        assert pool.failed(a, now)
        spans.append(a.ejected_until - now)
        now = a.ejected_until
    assert spans == [10, 20, 25, 25]


def test_failures_of_requests_started_before_ejection_do_not_extend_it():
    pool = TargetPool.of("svc", three(max_failures=1))
    a = pool.states[0]
    assert pool.failed(a, 0)
    until = a.ejected_until
    assert not pool.failed(a, 1)
    assert a.ejected_until == until and a.ejections_total == 1


def test_all_ejected_tries_the_one_back_soonest_and_exclude():
    pool = TargetPool.of("svc", three(max_failures=1))
    a, b, c = pool.states
    pool.failed(b, 0)
    pool.failed(a, 1)
    pool.failed(c, 2)
    assert pool.pick(3) is b
    assert pool.pick(3, exclude=["http://b:1/"]) is a
    assert pool.pick(3, exclude=[s.key for s in pool.states]) is None


def test_active_checks_take_out_and_put_back():
    pool = TargetPool.of("svc", three(max_failures=2, health_path="/healthz"))
    b = pool.states[1]
    pool.checked(b, False, 0)
    assert pool.healthy(b, 0)
    pool.checked(b, False, 1)
    assert not pool.healthy(b, 1) and b.ejections_total == 1
    assert picks(pool, 4, 2) == ["a", "c", "a", "c"]
    pool.failed(b, 2)  # passive ejection as well
    pool.checked(b, True, 3)  # a passing check ends both
    assert pool.healthy(b, 3) and b.ejected_until == 0


def test_update_keeps_state_of_targets_that_stay():
    balancers = Balancers()
    r1 = three(max_failures=1)
    pool = balancers.pool("svc", r1)
    pool.failed(pool.states[1], 0)
    r2 = route("http://b:1/", "http://d:1/", balancing=pb.NbgwBalancing(max_failures=1))
    pool2 = balancers.pool("svc", r2)
    assert pool2 is pool
    assert [s.route.host for s in pool.states] == ["b", "d"]
    assert pool.states[0].ejected_until > 0
    balancers.forget("svc")
    assert len(balancers) == 0


def test_registry_is_bounded():
    balancers = Balancers(max_pools=3)
    for i in range(5):
        balancers.pool(f"svc{i}", three())
    assert len(balancers) == 3
    assert balancers.get("svc0", "/") is None and balancers.get("svc4", "/") is not None
    assert set(balancers._paths) == {"svc2", "svc3", "svc4"}  # the index follows evictions


def test_forget_keeps_the_paths_still_mapped():
    balancers = Balancers()
    api = PathRouter([parse_target("/api", t, pb.PathTargetOptions())
                      for t in ("http://a:1/", "http://b:1/")]).match("/api")
    balancers.pool("svc", three())
    balancers.pool("svc", api)
    balancers.pool("other", three())
    balancers.forget("svc", keep_paths={"/api"})
    assert balancers.get("svc", "/") is None and balancers.get("svc", "/api") is not None
    balancers.forget("svc")
    balancers.forget("nobody")
    assert [p.service for p in balancers.pools()] == ["other"]
    assert set(balancers._paths) == {"other"}


def test_metrics_labels_and_series_bound():
    balancers = Balancers(max_series=4)
    pool = balancers.pool("svc", three(max_failures=1))
    pool.started(pool.states[0])
    pool.failed(pool.states[0], 0)
    balancers.pool("svc2", three())
    fams = {f.name: f for f in balancers.collect()}
    req = fams["nbgateway_upstream_target_requests"].samples
    assert len([s for s in req if s.name.endswith("_total")]) == 4
    samples = fams["nbgateway_upstream_target_healthy"].samples
    healthy = {s.labels["target"]: s.value for s in samples if s.labels["service"] == "svc"}
    assert healthy == {"http://a:1": 0, "http://b:1": 1, "http://c:1": 1}
    ej = [s for s in fams["nbgateway_upstream_target_ejections"].samples
          if s.labels.get("target") == "http://a:1" and s.name.endswith("_total")]
    assert ej[0].value == 1


def test_balancing_from_proto_defaults_and_clamps():
    assert balancing_of(pb.PathTargetOptions()) is None
    b = Balancing.from_proto(pb.NbgwBalancing(policy="weird", max_failures=-4,
                                              health_path="nope", health_status=99))
    assert b.policy == "round_robin" and b.max_failures == 3 and not b.active
    assert b.health_status == 0 and b.healthy_status(301) and not b.healthy_status(500)
    b = Balancing.from_proto(pb.NbgwBalancing(
        policy="least_conn", health_path="/h", health_status=204,
        health_interval=duration_pb2.Duration(nanos=1000),
        backoff=duration_pb2.Duration(seconds=20), max_backoff=duration_pb2.Duration(seconds=5)))
    assert b.active and b.health_interval == 1.0 and b.health_timeout <= 1.0
    assert b.max_backoff == 20 and b.healthy_status(204) and not b.healthy_status(200)


def test_retry_and_passive_failure_classification():
    from twisted.internet import defer, error

    from nbgateway.dial import DirectUpstreamDeniedError, ProxyNotConnectedError

    assert never_reached_upstream(error.ConnectionRefusedError())
    assert never_reached_upstream(error.TCPTimedOutError())
    assert never_reached_upstream(ConnectionRefusedError())
    assert not never_reached_upstream(error.ConnectionLost())
    assert not never_reached_upstream(DirectUpstreamDeniedError("not_allowed", "h", 1))
    assert counts_against_target(error.ConnectionLost(), False)
    assert counts_against_target(defer.CancelledError(), True)
    assert not counts_against_target(defer.CancelledError(), False)
    assert not counts_against_target(ProxyNotConnectedError(), False)
    assert not counts_against_target(DirectUpstreamDeniedError("x", "h", 1), False)
