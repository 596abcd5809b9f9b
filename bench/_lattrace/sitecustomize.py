"""Request-path latency tracer for bench/latency_trace.py (on PYTHONPATH of
the gateway it starts).  Bench tooling, not shipped; off unless
``NBGW_LATTRACE=<file>``.

Wraps the functions one keep-alive request passes through in the gateway
(the reactor's poll and per-fd dispatch, the UDP read, the WireGuard receive,
the netstack delivery to the HTTP channel, the upstream write and read, the
write back into the netstack, the WireGuard send and the end-of-turn flush,
timers) with ``perf_counter_ns`` stamps into a bounded in-memory list, and
records every ``callLater`` with its function's name.  The list (at most
``NBGW_LATTRACE_MAX`` events, 400,000 by default) is written to the file as
``<ns> <event>`` lines on SIGUSR2 (and cleared), so a bench can trace a
window of a wrk run.  The wrapping itself costs about a microsecond per
stamp; read the gaps between stamps, not the absolute durations.
"""

import os

_OUT = os.environ.get("NBGW_LATTRACE")

if _OUT:
    import functools
    import importlib
    import signal
    import sys
    import time

    _EV: list = []
    _MAX = int(os.environ.get("NBGW_LATTRACE_MAX", "400000"))
    _now = time.perf_counter_ns

    def _rec(name: str) -> None:
        if len(_EV) < _MAX:
            _EV.append((_now(), name))

    def _dump(_sig=None, _frame=None) -> None:
        ev = _EV[:]
        _EV.clear()
        with open(_OUT, "a") as f:
            f.write("".join(f"{t} {n}\n" for t, n in ev))
            f.write("# dump\n")

    def _wrap(cls, attr: str, label: str, exit_too: bool = True) -> None:
        fn = cls.__dict__.get(attr)
        if fn is None or getattr(fn, "_lat_wrapped", False):
            return
        if exit_too:
            @functools.wraps(fn)
            def w(*a, **k):
                _EV.append((_now(), label + ">")) if len(_EV) < _MAX else None
                try:
                    return fn(*a, **k)
                finally:
                    _EV.append((_now(), label + "<")) if len(_EV) < _MAX else None
        else:
            @functools.wraps(fn)
            def w(*a, **k):
                _EV.append((_now(), label)) if len(_EV) < _MAX else None
                return fn(*a, **k)
        w._lat_wrapped = True
        setattr(cls, attr, w)

    def _fd_label(selectable) -> str:
        name = type(selectable).__name__
        if name == "Client" or name == "Connection":
            proto = getattr(selectable, "protocol", None)
            name += ":" + type(proto).__name__
        return name

    def _install_light() -> None:
        """``NBGW_LATTRACE_LIGHT=1``: one stamp per UDP read event and nothing
        else (the interval between two is one request cycle at one
        connection, with next to no tracer cost), plus the toggle."""
        from twisted.internet import epollreactor

        from nbgateway.wireguard.udp import BatchingPort

        orig_rw = epollreactor.EPollReactor._doReadOrWrite

        def _doReadOrWrite(self, selectable, fd, event):
            if selectable.__class__ is BatchingPort and len(_EV) < _MAX:
                _EV.append((_now(), "fd> BatchingPort"))
            return orig_rw(self, selectable, fd, event)

        epollreactor.EPollReactor._doReadOrWrite = _doReadOrWrite
        _toggle()

    def _install() -> None:
        if os.environ.get("NBGW_LATTRACE_LIGHT") == "1":
            _install_light()
            return
        from twisted.internet import base, epollreactor

        orig_poll = epollreactor.EPollReactor.doPoll

        def doPoll(self, timeout):
            _rec(f"poll> t={timeout if timeout is None else round(timeout * 1e6)}")
            return orig_poll(self, timeout)

        # the class binds doIteration = doPoll: patch both names
        epollreactor.EPollReactor.doPoll = doPoll
        epollreactor.EPollReactor.doIteration = doPoll
        orig_rw = epollreactor.EPollReactor._doReadOrWrite

        def _doReadOrWrite(self, selectable, fd, event):
            _rec(f"fd> {_fd_label(selectable)} ev={event}")
            try:
                return orig_rw(self, selectable, fd, event)
            finally:
                _rec("fd<")

        epollreactor.EPollReactor._doReadOrWrite = _doReadOrWrite
        orig_run = base.ReactorBase.runUntilCurrent

        def runUntilCurrent(self):
            if (self._pendingTimedCalls and self._pendingTimedCalls[0].time <= self.seconds()) \
                    or self.threadCallQueue or self._newTimedCalls:
                _rec("timers>")
                try:
                    return orig_run(self)
                finally:
                    _rec("timers<")
            return orig_run(self)

        base.ReactorBase.runUntilCurrent = runUntilCurrent
        orig_cl = base.ReactorBase.callLater

        def callLater(self, delay, fn, *a, **k):
            _rec(f"callLater {getattr(fn, '__qualname__', fn)} {delay:.6f}")
            return orig_cl(self, delay, fn, *a, **k)

        base.ReactorBase.callLater = callLater
        specs = [
            ("nbgateway.wireguard.udp", "BatchingPort", "doRead", "udp_read"),
            ("nbgateway.wireguard.udp", "WireGuardProtocol", "sendDatagrams", "wg_send"),
            ("nbgateway.wireguard.udp", "WireGuardProtocol", "flush", "udp_flush"),
            ("nbgateway.wireguard.udp", "WireGuardProtocol", "_send_raw", "sendto"),
            ("nbgateway.wireguard.udp", "WireGuardProtocol", "_send_gso", "sendgso"),
            ("nbgateway.netstack.transport", "TunnelTCPTransport", "tcp_data", "tcp_data"),
            ("nbgateway.netstack.transport", "TunnelTCPTransport", "write", "ns_write"),
            ("nbgateway.proxy.fast", "FastHTTPChannel", "_next_request", "http_req"),
            ("nbgateway.dial.http11", "UpstreamConnection", "dataReceived", "up_read"),
            ("nbgateway.mgmt.logship", "LogShipper", "submit", "log_submit"),
            ("nbgateway.http.site", "GatewayResource", "render", "gw_render"),
            ("nbgateway.proxy.reverse", "ReverseProxy", "render", "rp_render"),
            ("nbgateway.proxy.reverse", "ReverseProxy", "prepare", "rp_prepare"),
            ("nbgateway.proxy.reverse", "_Exchange", "start", "ex_start"),
            ("nbgateway.proxy.reverse", "_Exchange", "_on_response", "ex_resp"),
            ("nbgateway.proxy.reverse", "_Exchange", "finish", "ex_finish"),
            ("nbgateway.dial.http11", "LeanAgent", "request", "agent_req"),
            ("nbgateway.dial.http11", "UpstreamConnection", "on_headers_complete", "up_head"),
            ("nbgateway.proxy.fast", "FastRequest", "finish", "req_finish"),
            ("nbgateway.netstack.stack", "Stack", "_fire", "stack_fire"),
            ("nbgateway.wireguard.mux", "DeviceMux", "datagramsReceived", "mux_rx"),
            ("nbgateway.wireguard.datapath", "TransportPath", "datagramsReceived", "dev_rx"),
            ("nbgateway.netstack.stack_input", "StackInput", "packetsReceived", "ns_rx"),
            ("nbgateway.netstack.tcp_output", "ConnectionOutput", "_emit", "tcp_emit"),
            ("nbgateway.netstack.stack_output", "StackOutput", "uncork", "uncork"),
            ("nbgateway.wireguard.datapath", "TransportPath", "sendPackets", "dev_tx"),
            ("nbgateway.wireguard.datapath", "TransportPath", "_flush_tx", "dev_flush"),
            ("nbgateway.mgmt.logship", "LogShipper", "_next", "log_ship"),
        ]
        for mod, cls_name, attr, label in specs:
            try:
                cls = getattr(importlib.import_module(mod), cls_name)
            except (ImportError, AttributeError) as exc:
                print(f"lattrace: {mod}.{cls_name}: {exc}", file=sys.stderr)
                continue
            _wrap(cls, attr, label)
        try:
            sw = importlib.import_module("nbgateway.dial.sockwrite")
            orig_w = sw.write

            def write(transport, data):
                _rec(f"up_write> {len(data)}")
                try:
                    return orig_w(transport, data)
                finally:
                    _rec("up_write<")

            sw.write = write
            h11 = importlib.import_module("nbgateway.dial.http11")
            for k, v in list(vars(h11).items()):
                if v is orig_w:
                    setattr(h11, k, write)
        except ImportError as exc:
            print(f"lattrace: sockwrite: {exc}", file=sys.stderr)
        import gc as _gc

        def _gc_cb(phase: str, info: dict) -> None:
            _rec(f"gc{'>' if phase == 'start' else '<'} {info.get('generation')}")

        _gc.callbacks.append(_gc_cb)
        _toggle()
        print(f"lattrace: on, dumping to {_OUT} on SIGUSR2", file=sys.stderr)

    def _toggle() -> None:
        toggle = os.environ.get("NBGW_LATTRACE_TOGGLE")  # module:Class.attr
        if toggle:
            import gc

            from twisted.internet import reactor
            mod, _, rest = toggle.partition(":")
            cls_name, _, attr = rest.partition(".")
            cls = getattr(importlib.import_module(mod), cls_name)
            objs = [o for o in gc.get_objects() if isinstance(o, cls)]
            period = float(os.environ.get("NBGW_LATTRACE_PERIOD", "0.2"))

            def flip() -> None:
                for o in objs:
                    setattr(o, attr, not getattr(o, attr))
                _rec(f"mode {attr}={int(bool(getattr(objs[0], attr)))}" if objs else "mode ?")
                reactor.callLater(period, flip)

            reactor.callLater(period, flip)
            print(f"lattrace: toggling {attr} on {len(objs)} objects every {period} s",
                  file=sys.stderr)

    class _Finder:
        """Install once twisted's epoll reactor and the gateway are importable:
        at the first import of ``nbgateway.tap`` (twistd's plugin)."""

        def find_spec(self, name, path=None, target=None):
            if name == "nbgateway.tap":
                sys.meta_path.remove(self)
                import threading

                def later() -> None:
                    # after the plugin module finished importing
                    import time as _t
                    while "nbgateway.tap" not in sys.modules or "twisted.internet.reactor" \
                            not in sys.modules:
                        _t.sleep(0.05)
                    _t.sleep(0.5)
                    from twisted.internet import reactor
                    reactor.callFromThread(_install)  # patch on the reactor thread

                threading.Thread(target=later, daemon=True).start()
            return None

    sys.meta_path.insert(0, _Finder())
    signal.signal(signal.SIGUSR2, _dump)  # main thread, before twistd runs
