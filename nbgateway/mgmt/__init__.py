"""Management client: Deferred-returning ProxyService RPCs over grpcio.

``client.GrpcManagementClient`` is the real client (a Twisted Service),
``fake.FakeManagementClient`` the in-memory double for unit tests; both provide
:class:`nbgateway.interfaces.IManagementClient`.  Only ``_grpcbridge`` knows
about threads.
"""
