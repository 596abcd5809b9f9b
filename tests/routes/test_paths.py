"""Routing, rewrite and redirect rules (with issue 6's hardening)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nbgateway.routes.hosts import host_port, host_without_port
from nbgateway.routes.paths import (
    PATH_REWRITE_DEFAULT,
    PATH_REWRITE_PRESERVE,
    PathRouter,
    RouteError,
    outgoing_path,
    parse_target,
    prefix_matches,
    rewrite_location,
)


def router(*pairs):
    return PathRouter([parse_target(p, t) for p, t in pairs])


def test_host_port_stripping_b56():
    assert host_without_port("private.svc:8443") == "private.svc"
    assert host_without_port("[fd00::1]:443") == "fd00::1"
    assert host_without_port("fd00::1") == "fd00::1"
    assert host_without_port("Case.Example") == "Case.Example"  # exact, no lowercasing
    assert host_port("private.svc:8443") == "8443"
    assert host_port("private.svc") is None
    assert host_port("[fd00::1]:80") == "80"


def test_longest_prefix_and_segment_boundary_b57():
    r = router(("/", "http://root:1/"), ("/api", "http://api:2/"))
    assert r.match("/api/x").host == "api"
    assert r.match("/api").host == "api"
    assert r.match("/other").host == "root"
    # hardening: /apiv2 is not under /api
    assert r.match("/apiv2").host == "root"


def test_no_catch_all_means_no_match():
    r = router(("/api", "http://api:2/"))
    assert r.match("/other") is None


def test_equal_length_ties_are_lexical_and_duplicates_are_one_route_with_targets():
    r = router(("/a/", "http://x:1/"), ("/a", "http://y:1/"), ("/a", "http://z:1/"),
               ("/a", "http://y:1/"))
    assert [x.path for x in r.routes] == ["/a", "/a/"]
    route = r.match("/a/b")
    # upstream sends one PathMapping per target: same path = one route, several
    # targets in mapping order (a repeated target once)
    assert route.host == "y"
    assert [t.host for t in route.targets] == ["y", "z"]
    assert all(t.path == "/a" and t.group == () for t in route.targets)
    single = r.routes[1]
    assert single.path == "/a/" and single.targets == (single,)


def test_invalid_target_rejected():
    with pytest.raises(RouteError, match='invalid target URL "ftp://x/" for path "/"'):
        parse_target("/", "ftp://x/")
    with pytest.raises(RouteError):
        parse_target("/", "http://x:99999/")


def test_rewrite_modes_b58():
    route = parse_target("/api", "http://b:8080/")
    assert outgoing_path(route, "/api/users", "q=1", PATH_REWRITE_DEFAULT) == "/users?q=1"
    assert outgoing_path(route, "/api/users", "q=1", PATH_REWRITE_PRESERVE) == "/api/users?q=1"
    assert outgoing_path(route, "/api", "", PATH_REWRITE_DEFAULT) == "/"


def test_single_slash_join_examples():
    assert outgoing_path(parse_target("/", "http://b/"), "/users", "", 0) == "/users"
    assert outgoing_path(parse_target("/x", "http://b/heise"), "/x", "", 0) == "/heise/"
    assert outgoing_path(parse_target("/", "http://b/base"), "/x", "", 0) == "/base/x"


def test_query_concat_and_session_token_removed_b47():
    route = parse_target("/", "http://b/?t=1")
    assert outgoing_path(route, "/p", "x=1&session_token=T", 0) == "/p?t=1&x=1"


def test_rewrite_location():
    route = parse_target("/app", "http://backend:8080/")
    assert rewrite_location("http://backend:8080/login?next=1#f", route, "svc.example",
                            "https", 0) == "https://svc.example/app/login?next=1#f"
    # other authority untouched
    assert rewrite_location("http://elsewhere/x", route, "svc.example", "https", 0) == \
        "http://elsewhere/x"
    # relative untouched
    assert rewrite_location("/x", route, "svc.example", "https", 0) == "/x"
    # default port normalisation
    r2 = parse_target("/", "https://b/")
    assert rewrite_location("https://b:443/y", r2, "h", "https", 0) == "https://h/y"
    with pytest.raises(ValueError):
        rewrite_location("http://backend:bad/x", route, "h", "https", 0)


@given(st.text(alphabet="/abc", max_size=12), st.text(alphabet="/abc", max_size=12))
def test_prefix_matches_is_segment_aware(prefix, path):
    result = prefix_matches(prefix, path)
    p = prefix.rstrip("/")
    if prefix in ("", "/"):
        assert result
    else:
        assert result == (path == p or path.startswith(p + "/"))


def _outgoing_path_reference(route, request_path, request_query, mode):
    """outgoing_path as written before the hot-path inlining."""
    from nbgateway.routes.paths import _join, strip_session_token

    path = request_path or "/"
    matched = route.path
    if mode != PATH_REWRITE_PRESERVE and matched not in ("", "/"):
        path = path[len(matched.rstrip("/")):] or "/"
    path = _join(route.target_path, path)
    query = "&".join(q for q in (route.target_query, strip_session_token(request_query)) if q)
    return f"{path}?{query}" if query else path


@given(st.sampled_from(["/", "", "/api", "/api/", "/a/b"]),
       st.sampled_from(["http://u:1", "http://u:1/", "http://u:1/base", "http://u:1/base/",
                        "http://u:1/b?x=1", "http://u:1?y=2", "http://u:1//d//"]),
       st.sampled_from(["", "/", "/api", "/api/users", "//x", "/a/b/c/", "/apix"]),
       st.sampled_from(["", "q=1", "session_token=abc", "a=1&session_token=s&b=2", "&"]),
       st.sampled_from([PATH_REWRITE_DEFAULT, PATH_REWRITE_PRESERVE]))
def test_outgoing_path_matches_the_reference(path, target, request_path, query, mode):
    route = parse_target(path, target)
    assert (outgoing_path(route, request_path, query, mode)
            == _outgoing_path_reference(route, request_path, query, mode))
