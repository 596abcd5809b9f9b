import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProxyMappingUpdateType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UPDATE_TYPE_CREATED: _ClassVar[ProxyMappingUpdateType]
    UPDATE_TYPE_MODIFIED: _ClassVar[ProxyMappingUpdateType]
    UPDATE_TYPE_REMOVED: _ClassVar[ProxyMappingUpdateType]

class PathRewriteMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PATH_REWRITE_DEFAULT: _ClassVar[PathRewriteMode]
    PATH_REWRITE_PRESERVE: _ClassVar[PathRewriteMode]

class MiddlewareSlot(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MIDDLEWARE_SLOT_UNSPECIFIED: _ClassVar[MiddlewareSlot]
    MIDDLEWARE_SLOT_ON_REQUEST: _ClassVar[MiddlewareSlot]
    MIDDLEWARE_SLOT_ON_RESPONSE: _ClassVar[MiddlewareSlot]
    MIDDLEWARE_SLOT_TERMINAL: _ClassVar[MiddlewareSlot]

class ProxyStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROXY_STATUS_PENDING: _ClassVar[ProxyStatus]
    PROXY_STATUS_ACTIVE: _ClassVar[ProxyStatus]
    PROXY_STATUS_TUNNEL_NOT_CREATED: _ClassVar[ProxyStatus]
    PROXY_STATUS_CERTIFICATE_PENDING: _ClassVar[ProxyStatus]
    PROXY_STATUS_CERTIFICATE_FAILED: _ClassVar[ProxyStatus]
    PROXY_STATUS_ERROR: _ClassVar[ProxyStatus]
UPDATE_TYPE_CREATED: ProxyMappingUpdateType
UPDATE_TYPE_MODIFIED: ProxyMappingUpdateType
UPDATE_TYPE_REMOVED: ProxyMappingUpdateType
PATH_REWRITE_DEFAULT: PathRewriteMode
PATH_REWRITE_PRESERVE: PathRewriteMode
MIDDLEWARE_SLOT_UNSPECIFIED: MiddlewareSlot
MIDDLEWARE_SLOT_ON_REQUEST: MiddlewareSlot
MIDDLEWARE_SLOT_ON_RESPONSE: MiddlewareSlot
MIDDLEWARE_SLOT_TERMINAL: MiddlewareSlot
PROXY_STATUS_PENDING: ProxyStatus
PROXY_STATUS_ACTIVE: ProxyStatus
PROXY_STATUS_TUNNEL_NOT_CREATED: ProxyStatus
PROXY_STATUS_CERTIFICATE_PENDING: ProxyStatus
PROXY_STATUS_CERTIFICATE_FAILED: ProxyStatus
PROXY_STATUS_ERROR: ProxyStatus

class ProxyCapabilities(_message.Message):
    __slots__ = ("supports_custom_ports", "require_subdomain", "supports_crowdsec", "private", "supports_private_service", "nbgw_l4_public_ports")
    SUPPORTS_CUSTOM_PORTS_FIELD_NUMBER: _ClassVar[int]
    REQUIRE_SUBDOMAIN_FIELD_NUMBER: _ClassVar[int]
    SUPPORTS_CROWDSEC_FIELD_NUMBER: _ClassVar[int]
    PRIVATE_FIELD_NUMBER: _ClassVar[int]
    SUPPORTS_PRIVATE_SERVICE_FIELD_NUMBER: _ClassVar[int]
    NBGW_L4_PUBLIC_PORTS_FIELD_NUMBER: _ClassVar[int]
    supports_custom_ports: bool
    require_subdomain: bool
    supports_crowdsec: bool
    private: bool
    supports_private_service: bool
    nbgw_l4_public_ports: NbgwL4Ports
    def __init__(self, supports_custom_ports: _Optional[bool] = ..., require_subdomain: _Optional[bool] = ..., supports_crowdsec: _Optional[bool] = ..., private: _Optional[bool] = ..., supports_private_service: _Optional[bool] = ..., nbgw_l4_public_ports: _Optional[_Union[NbgwL4Ports, _Mapping]] = ...) -> None: ...

class NbgwL4Ports(_message.Message):
    __slots__ = ("ranges", "tls_port")
    RANGES_FIELD_NUMBER: _ClassVar[int]
    TLS_PORT_FIELD_NUMBER: _ClassVar[int]
    ranges: _containers.RepeatedCompositeFieldContainer[NbgwPortRange]
    tls_port: int
    def __init__(self, ranges: _Optional[_Iterable[_Union[NbgwPortRange, _Mapping]]] = ..., tls_port: _Optional[int] = ...) -> None: ...

class NbgwPortRange(_message.Message):
    __slots__ = ("first", "last")
    FIRST_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    first: int
    last: int
    def __init__(self, first: _Optional[int] = ..., last: _Optional[int] = ...) -> None: ...

class GetMappingUpdateRequest(_message.Message):
    __slots__ = ("proxy_id", "version", "started_at", "address", "capabilities", "nbgw_resume_revision")
    PROXY_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    NBGW_RESUME_REVISION_FIELD_NUMBER: _ClassVar[int]
    proxy_id: str
    version: str
    started_at: _timestamp_pb2.Timestamp
    address: str
    capabilities: ProxyCapabilities
    nbgw_resume_revision: int
    def __init__(self, proxy_id: _Optional[str] = ..., version: _Optional[str] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., address: _Optional[str] = ..., capabilities: _Optional[_Union[ProxyCapabilities, _Mapping]] = ..., nbgw_resume_revision: _Optional[int] = ...) -> None: ...

class GetMappingUpdateResponse(_message.Message):
    __slots__ = ("mapping", "initial_sync_complete", "nbgw_revision", "nbgw_resumed")
    MAPPING_FIELD_NUMBER: _ClassVar[int]
    INITIAL_SYNC_COMPLETE_FIELD_NUMBER: _ClassVar[int]
    NBGW_REVISION_FIELD_NUMBER: _ClassVar[int]
    NBGW_RESUMED_FIELD_NUMBER: _ClassVar[int]
    mapping: _containers.RepeatedCompositeFieldContainer[ProxyMapping]
    initial_sync_complete: bool
    nbgw_revision: int
    nbgw_resumed: bool
    def __init__(self, mapping: _Optional[_Iterable[_Union[ProxyMapping, _Mapping]]] = ..., initial_sync_complete: _Optional[bool] = ..., nbgw_revision: _Optional[int] = ..., nbgw_resumed: _Optional[bool] = ...) -> None: ...

class PathTargetOptions(_message.Message):
    __slots__ = ("skip_tls_verify", "request_timeout", "path_rewrite", "custom_headers", "proxy_protocol", "session_idle_timeout", "direct_upstream", "capture_max_request_bytes", "capture_max_response_bytes", "capture_content_types", "middlewares", "agent_network", "disable_access_log", "nbgw_balancing", "nbgw_upstream_protocol")
    class CustomHeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SKIP_TLS_VERIFY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    PATH_REWRITE_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_HEADERS_FIELD_NUMBER: _ClassVar[int]
    PROXY_PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    SESSION_IDLE_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    DIRECT_UPSTREAM_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_MAX_REQUEST_BYTES_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_MAX_RESPONSE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_CONTENT_TYPES_FIELD_NUMBER: _ClassVar[int]
    MIDDLEWARES_FIELD_NUMBER: _ClassVar[int]
    AGENT_NETWORK_FIELD_NUMBER: _ClassVar[int]
    DISABLE_ACCESS_LOG_FIELD_NUMBER: _ClassVar[int]
    NBGW_BALANCING_FIELD_NUMBER: _ClassVar[int]
    NBGW_UPSTREAM_PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    skip_tls_verify: bool
    request_timeout: _duration_pb2.Duration
    path_rewrite: PathRewriteMode
    custom_headers: _containers.ScalarMap[str, str]
    proxy_protocol: bool
    session_idle_timeout: _duration_pb2.Duration
    direct_upstream: bool
    capture_max_request_bytes: int
    capture_max_response_bytes: int
    capture_content_types: _containers.RepeatedScalarFieldContainer[str]
    middlewares: _containers.RepeatedCompositeFieldContainer[MiddlewareConfig]
    agent_network: bool
    disable_access_log: bool
    nbgw_balancing: NbgwBalancing
    nbgw_upstream_protocol: str
    def __init__(self, skip_tls_verify: _Optional[bool] = ..., request_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., path_rewrite: _Optional[_Union[PathRewriteMode, str]] = ..., custom_headers: _Optional[_Mapping[str, str]] = ..., proxy_protocol: _Optional[bool] = ..., session_idle_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., direct_upstream: _Optional[bool] = ..., capture_max_request_bytes: _Optional[int] = ..., capture_max_response_bytes: _Optional[int] = ..., capture_content_types: _Optional[_Iterable[str]] = ..., middlewares: _Optional[_Iterable[_Union[MiddlewareConfig, _Mapping]]] = ..., agent_network: _Optional[bool] = ..., disable_access_log: _Optional[bool] = ..., nbgw_balancing: _Optional[_Union[NbgwBalancing, _Mapping]] = ..., nbgw_upstream_protocol: _Optional[str] = ...) -> None: ...

class NbgwBalancing(_message.Message):
    __slots__ = ("policy", "max_failures", "backoff", "max_backoff", "health_path", "health_interval", "health_timeout", "health_status")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    MAX_FAILURES_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_FIELD_NUMBER: _ClassVar[int]
    MAX_BACKOFF_FIELD_NUMBER: _ClassVar[int]
    HEALTH_PATH_FIELD_NUMBER: _ClassVar[int]
    HEALTH_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    HEALTH_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    HEALTH_STATUS_FIELD_NUMBER: _ClassVar[int]
    policy: str
    max_failures: int
    backoff: _duration_pb2.Duration
    max_backoff: _duration_pb2.Duration
    health_path: str
    health_interval: _duration_pb2.Duration
    health_timeout: _duration_pb2.Duration
    health_status: int
    def __init__(self, policy: _Optional[str] = ..., max_failures: _Optional[int] = ..., backoff: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_backoff: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., health_path: _Optional[str] = ..., health_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., health_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., health_status: _Optional[int] = ...) -> None: ...

class MiddlewareConfig(_message.Message):
    __slots__ = ("id", "enabled", "slot", "config_json", "fail_mode", "timeout", "can_mutate")
    class FailMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        FAIL_OPEN: _ClassVar[MiddlewareConfig.FailMode]
        FAIL_CLOSED: _ClassVar[MiddlewareConfig.FailMode]
    FAIL_OPEN: MiddlewareConfig.FailMode
    FAIL_CLOSED: MiddlewareConfig.FailMode
    ID_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    FAIL_MODE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    CAN_MUTATE_FIELD_NUMBER: _ClassVar[int]
    id: str
    enabled: bool
    slot: MiddlewareSlot
    config_json: bytes
    fail_mode: MiddlewareConfig.FailMode
    timeout: _duration_pb2.Duration
    can_mutate: bool
    def __init__(self, id: _Optional[str] = ..., enabled: _Optional[bool] = ..., slot: _Optional[_Union[MiddlewareSlot, str]] = ..., config_json: _Optional[bytes] = ..., fail_mode: _Optional[_Union[MiddlewareConfig.FailMode, str]] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., can_mutate: _Optional[bool] = ...) -> None: ...

class PathMapping(_message.Message):
    __slots__ = ("path", "target", "options")
    PATH_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    path: str
    target: str
    options: PathTargetOptions
    def __init__(self, path: _Optional[str] = ..., target: _Optional[str] = ..., options: _Optional[_Union[PathTargetOptions, _Mapping]] = ...) -> None: ...

class HeaderAuth(_message.Message):
    __slots__ = ("header", "hashed_value")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    HASHED_VALUE_FIELD_NUMBER: _ClassVar[int]
    header: str
    hashed_value: str
    def __init__(self, header: _Optional[str] = ..., hashed_value: _Optional[str] = ...) -> None: ...

class Authentication(_message.Message):
    __slots__ = ("session_key", "max_session_age_seconds", "password", "pin", "oidc", "header_auths")
    SESSION_KEY_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSION_AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    PIN_FIELD_NUMBER: _ClassVar[int]
    OIDC_FIELD_NUMBER: _ClassVar[int]
    HEADER_AUTHS_FIELD_NUMBER: _ClassVar[int]
    session_key: str
    max_session_age_seconds: int
    password: bool
    pin: bool
    oidc: bool
    header_auths: _containers.RepeatedCompositeFieldContainer[HeaderAuth]
    def __init__(self, session_key: _Optional[str] = ..., max_session_age_seconds: _Optional[int] = ..., password: _Optional[bool] = ..., pin: _Optional[bool] = ..., oidc: _Optional[bool] = ..., header_auths: _Optional[_Iterable[_Union[HeaderAuth, _Mapping]]] = ...) -> None: ...

class AccessRestrictions(_message.Message):
    __slots__ = ("allowed_cidrs", "blocked_cidrs", "allowed_countries", "blocked_countries", "crowdsec_mode")
    ALLOWED_CIDRS_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_CIDRS_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_COUNTRIES_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_COUNTRIES_FIELD_NUMBER: _ClassVar[int]
    CROWDSEC_MODE_FIELD_NUMBER: _ClassVar[int]
    allowed_cidrs: _containers.RepeatedScalarFieldContainer[str]
    blocked_cidrs: _containers.RepeatedScalarFieldContainer[str]
    allowed_countries: _containers.RepeatedScalarFieldContainer[str]
    blocked_countries: _containers.RepeatedScalarFieldContainer[str]
    crowdsec_mode: str
    def __init__(self, allowed_cidrs: _Optional[_Iterable[str]] = ..., blocked_cidrs: _Optional[_Iterable[str]] = ..., allowed_countries: _Optional[_Iterable[str]] = ..., blocked_countries: _Optional[_Iterable[str]] = ..., crowdsec_mode: _Optional[str] = ...) -> None: ...

class ProxyMapping(_message.Message):
    __slots__ = ("type", "id", "account_id", "domain", "path", "auth_token", "auth", "pass_host_header", "rewrite_redirects", "mode", "listen_port", "access_restrictions", "private", "nbgw_assertion", "nbgw_tokens", "nbgw_token_auth", "nbgw_sessions_not_before", "nbgw_client_ca_pem", "nbgw_client_cert_users")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    AUTH_TOKEN_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    PASS_HOST_HEADER_FIELD_NUMBER: _ClassVar[int]
    REWRITE_REDIRECTS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    LISTEN_PORT_FIELD_NUMBER: _ClassVar[int]
    ACCESS_RESTRICTIONS_FIELD_NUMBER: _ClassVar[int]
    PRIVATE_FIELD_NUMBER: _ClassVar[int]
    NBGW_ASSERTION_FIELD_NUMBER: _ClassVar[int]
    NBGW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NBGW_TOKEN_AUTH_FIELD_NUMBER: _ClassVar[int]
    NBGW_SESSIONS_NOT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    NBGW_CLIENT_CA_PEM_FIELD_NUMBER: _ClassVar[int]
    NBGW_CLIENT_CERT_USERS_FIELD_NUMBER: _ClassVar[int]
    type: ProxyMappingUpdateType
    id: str
    account_id: str
    domain: str
    path: _containers.RepeatedCompositeFieldContainer[PathMapping]
    auth_token: str
    auth: Authentication
    pass_host_header: bool
    rewrite_redirects: bool
    mode: str
    listen_port: int
    access_restrictions: AccessRestrictions
    private: bool
    nbgw_assertion: NbgwIdentityAssertion
    nbgw_tokens: _containers.RepeatedCompositeFieldContainer[NbgwServiceToken]
    nbgw_token_auth: bool
    nbgw_sessions_not_before: int
    nbgw_client_ca_pem: str
    nbgw_client_cert_users: _containers.RepeatedCompositeFieldContainer[NbgwClientCertUser]
    def __init__(self, type: _Optional[_Union[ProxyMappingUpdateType, str]] = ..., id: _Optional[str] = ..., account_id: _Optional[str] = ..., domain: _Optional[str] = ..., path: _Optional[_Iterable[_Union[PathMapping, _Mapping]]] = ..., auth_token: _Optional[str] = ..., auth: _Optional[_Union[Authentication, _Mapping]] = ..., pass_host_header: _Optional[bool] = ..., rewrite_redirects: _Optional[bool] = ..., mode: _Optional[str] = ..., listen_port: _Optional[int] = ..., access_restrictions: _Optional[_Union[AccessRestrictions, _Mapping]] = ..., private: _Optional[bool] = ..., nbgw_assertion: _Optional[_Union[NbgwIdentityAssertion, _Mapping]] = ..., nbgw_tokens: _Optional[_Iterable[_Union[NbgwServiceToken, _Mapping]]] = ..., nbgw_token_auth: _Optional[bool] = ..., nbgw_sessions_not_before: _Optional[int] = ..., nbgw_client_ca_pem: _Optional[str] = ..., nbgw_client_cert_users: _Optional[_Iterable[_Union[NbgwClientCertUser, _Mapping]]] = ...) -> None: ...

class NbgwClientCertUser(_message.Message):
    __slots__ = ("match", "user_id", "email", "group_ids", "group_names")
    MATCH_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    GROUP_IDS_FIELD_NUMBER: _ClassVar[int]
    GROUP_NAMES_FIELD_NUMBER: _ClassVar[int]
    match: str
    user_id: str
    email: str
    group_ids: _containers.RepeatedScalarFieldContainer[str]
    group_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, match: _Optional[str] = ..., user_id: _Optional[str] = ..., email: _Optional[str] = ..., group_ids: _Optional[_Iterable[str]] = ..., group_names: _Optional[_Iterable[str]] = ...) -> None: ...

class NbgwServiceToken(_message.Message):
    __slots__ = ("id", "name", "secret_sha256", "expires_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SECRET_SHA256_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    secret_sha256: str
    expires_at: int
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., secret_sha256: _Optional[str] = ..., expires_at: _Optional[int] = ...) -> None: ...

class NbgwIdentityAssertion(_message.Message):
    __slots__ = ("mode", "kid", "private_key", "keys", "issuer", "lifetime_seconds", "next_kid", "next_private_key", "next_from")
    MODE_FIELD_NUMBER: _ClassVar[int]
    KID_FIELD_NUMBER: _ClassVar[int]
    PRIVATE_KEY_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    LIFETIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_KID_FIELD_NUMBER: _ClassVar[int]
    NEXT_PRIVATE_KEY_FIELD_NUMBER: _ClassVar[int]
    NEXT_FROM_FIELD_NUMBER: _ClassVar[int]
    mode: str
    kid: str
    private_key: str
    keys: _containers.RepeatedCompositeFieldContainer[NbgwAssertionKey]
    issuer: str
    lifetime_seconds: int
    next_kid: str
    next_private_key: str
    next_from: int
    def __init__(self, mode: _Optional[str] = ..., kid: _Optional[str] = ..., private_key: _Optional[str] = ..., keys: _Optional[_Iterable[_Union[NbgwAssertionKey, _Mapping]]] = ..., issuer: _Optional[str] = ..., lifetime_seconds: _Optional[int] = ..., next_kid: _Optional[str] = ..., next_private_key: _Optional[str] = ..., next_from: _Optional[int] = ...) -> None: ...

class NbgwAssertionKey(_message.Message):
    __slots__ = ("kid", "x")
    KID_FIELD_NUMBER: _ClassVar[int]
    X_FIELD_NUMBER: _ClassVar[int]
    kid: str
    x: str
    def __init__(self, kid: _Optional[str] = ..., x: _Optional[str] = ...) -> None: ...

class SendAccessLogRequest(_message.Message):
    __slots__ = ("log",)
    LOG_FIELD_NUMBER: _ClassVar[int]
    log: AccessLog
    def __init__(self, log: _Optional[_Union[AccessLog, _Mapping]] = ...) -> None: ...

class SendAccessLogResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NbgwSendAccessLogBatchRequest(_message.Message):
    __slots__ = ("logs",)
    LOGS_FIELD_NUMBER: _ClassVar[int]
    logs: _containers.RepeatedCompositeFieldContainer[AccessLog]
    def __init__(self, logs: _Optional[_Iterable[_Union[AccessLog, _Mapping]]] = ...) -> None: ...

class NbgwSendAccessLogBatchResponse(_message.Message):
    __slots__ = ("stored",)
    STORED_FIELD_NUMBER: _ClassVar[int]
    stored: int
    def __init__(self, stored: _Optional[int] = ...) -> None: ...

class AccessLog(_message.Message):
    __slots__ = ("timestamp", "log_id", "account_id", "service_id", "host", "path", "duration_ms", "method", "response_code", "source_ip", "auth_mechanism", "user_id", "auth_success", "bytes_upload", "bytes_download", "protocol", "metadata", "agent_network", "nbgw_target")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    LOG_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_CODE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_IP_FIELD_NUMBER: _ClassVar[int]
    AUTH_MECHANISM_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    AUTH_SUCCESS_FIELD_NUMBER: _ClassVar[int]
    BYTES_UPLOAD_FIELD_NUMBER: _ClassVar[int]
    BYTES_DOWNLOAD_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    AGENT_NETWORK_FIELD_NUMBER: _ClassVar[int]
    NBGW_TARGET_FIELD_NUMBER: _ClassVar[int]
    timestamp: _timestamp_pb2.Timestamp
    log_id: str
    account_id: str
    service_id: str
    host: str
    path: str
    duration_ms: int
    method: str
    response_code: int
    source_ip: str
    auth_mechanism: str
    user_id: str
    auth_success: bool
    bytes_upload: int
    bytes_download: int
    protocol: str
    metadata: _containers.ScalarMap[str, str]
    agent_network: bool
    nbgw_target: str
    def __init__(self, timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., log_id: _Optional[str] = ..., account_id: _Optional[str] = ..., service_id: _Optional[str] = ..., host: _Optional[str] = ..., path: _Optional[str] = ..., duration_ms: _Optional[int] = ..., method: _Optional[str] = ..., response_code: _Optional[int] = ..., source_ip: _Optional[str] = ..., auth_mechanism: _Optional[str] = ..., user_id: _Optional[str] = ..., auth_success: _Optional[bool] = ..., bytes_upload: _Optional[int] = ..., bytes_download: _Optional[int] = ..., protocol: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., agent_network: _Optional[bool] = ..., nbgw_target: _Optional[str] = ...) -> None: ...

class AuthenticateRequest(_message.Message):
    __slots__ = ("id", "account_id", "password", "pin", "header_auth")
    ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    PIN_FIELD_NUMBER: _ClassVar[int]
    HEADER_AUTH_FIELD_NUMBER: _ClassVar[int]
    id: str
    account_id: str
    password: PasswordRequest
    pin: PinRequest
    header_auth: HeaderAuthRequest
    def __init__(self, id: _Optional[str] = ..., account_id: _Optional[str] = ..., password: _Optional[_Union[PasswordRequest, _Mapping]] = ..., pin: _Optional[_Union[PinRequest, _Mapping]] = ..., header_auth: _Optional[_Union[HeaderAuthRequest, _Mapping]] = ...) -> None: ...

class HeaderAuthRequest(_message.Message):
    __slots__ = ("header_value", "header_name")
    HEADER_VALUE_FIELD_NUMBER: _ClassVar[int]
    HEADER_NAME_FIELD_NUMBER: _ClassVar[int]
    header_value: str
    header_name: str
    def __init__(self, header_value: _Optional[str] = ..., header_name: _Optional[str] = ...) -> None: ...

class PasswordRequest(_message.Message):
    __slots__ = ("password",)
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    password: str
    def __init__(self, password: _Optional[str] = ...) -> None: ...

class PinRequest(_message.Message):
    __slots__ = ("pin",)
    PIN_FIELD_NUMBER: _ClassVar[int]
    pin: str
    def __init__(self, pin: _Optional[str] = ...) -> None: ...

class AuthenticateResponse(_message.Message):
    __slots__ = ("success", "session_token")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    success: bool
    session_token: str
    def __init__(self, success: _Optional[bool] = ..., session_token: _Optional[str] = ...) -> None: ...

class SendStatusUpdateRequest(_message.Message):
    __slots__ = ("service_id", "account_id", "status", "certificate_issued", "error_message", "inbound_listener", "nbgw_certificate")
    SERVICE_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_ISSUED_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    INBOUND_LISTENER_FIELD_NUMBER: _ClassVar[int]
    NBGW_CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    service_id: str
    account_id: str
    status: ProxyStatus
    certificate_issued: bool
    error_message: str
    inbound_listener: ProxyInboundListener
    nbgw_certificate: NbgwCertificateStatus
    def __init__(self, service_id: _Optional[str] = ..., account_id: _Optional[str] = ..., status: _Optional[_Union[ProxyStatus, str]] = ..., certificate_issued: _Optional[bool] = ..., error_message: _Optional[str] = ..., inbound_listener: _Optional[_Union[ProxyInboundListener, _Mapping]] = ..., nbgw_certificate: _Optional[_Union[NbgwCertificateStatus, _Mapping]] = ...) -> None: ...

class NbgwCertificateStatus(_message.Message):
    __slots__ = ("issuer", "not_after", "source", "last_error", "ca_certificate_pem")
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    CA_CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    issuer: str
    not_after: _timestamp_pb2.Timestamp
    source: str
    last_error: str
    ca_certificate_pem: str
    def __init__(self, issuer: _Optional[str] = ..., not_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., source: _Optional[str] = ..., last_error: _Optional[str] = ..., ca_certificate_pem: _Optional[str] = ...) -> None: ...

class ProxyInboundListener(_message.Message):
    __slots__ = ("tunnel_ip", "https_port", "http_port")
    TUNNEL_IP_FIELD_NUMBER: _ClassVar[int]
    HTTPS_PORT_FIELD_NUMBER: _ClassVar[int]
    HTTP_PORT_FIELD_NUMBER: _ClassVar[int]
    tunnel_ip: str
    https_port: int
    http_port: int
    def __init__(self, tunnel_ip: _Optional[str] = ..., https_port: _Optional[int] = ..., http_port: _Optional[int] = ...) -> None: ...

class SendStatusUpdateResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CreateProxyPeerRequest(_message.Message):
    __slots__ = ("service_id", "account_id", "token", "wireguard_public_key", "cluster", "wireguard_endpoint")
    SERVICE_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    WIREGUARD_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    WIREGUARD_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    service_id: str
    account_id: str
    token: str
    wireguard_public_key: str
    cluster: str
    wireguard_endpoint: str
    def __init__(self, service_id: _Optional[str] = ..., account_id: _Optional[str] = ..., token: _Optional[str] = ..., wireguard_public_key: _Optional[str] = ..., cluster: _Optional[str] = ..., wireguard_endpoint: _Optional[str] = ...) -> None: ...

class CreateProxyPeerResponse(_message.Message):
    __slots__ = ("success", "error_message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    error_message: str
    def __init__(self, success: _Optional[bool] = ..., error_message: _Optional[str] = ...) -> None: ...

class GetOIDCURLRequest(_message.Message):
    __slots__ = ("id", "account_id", "redirect_url")
    ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    REDIRECT_URL_FIELD_NUMBER: _ClassVar[int]
    id: str
    account_id: str
    redirect_url: str
    def __init__(self, id: _Optional[str] = ..., account_id: _Optional[str] = ..., redirect_url: _Optional[str] = ...) -> None: ...

class GetOIDCURLResponse(_message.Message):
    __slots__ = ("url",)
    URL_FIELD_NUMBER: _ClassVar[int]
    url: str
    def __init__(self, url: _Optional[str] = ...) -> None: ...

class ValidateSessionRequest(_message.Message):
    __slots__ = ("domain", "session_token")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    domain: str
    session_token: str
    def __init__(self, domain: _Optional[str] = ..., session_token: _Optional[str] = ...) -> None: ...

class ValidateSessionResponse(_message.Message):
    __slots__ = ("valid", "user_id", "user_email", "denied_reason", "peer_group_ids", "peer_group_names")
    VALID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    USER_EMAIL_FIELD_NUMBER: _ClassVar[int]
    DENIED_REASON_FIELD_NUMBER: _ClassVar[int]
    PEER_GROUP_IDS_FIELD_NUMBER: _ClassVar[int]
    PEER_GROUP_NAMES_FIELD_NUMBER: _ClassVar[int]
    valid: bool
    user_id: str
    user_email: str
    denied_reason: str
    peer_group_ids: _containers.RepeatedScalarFieldContainer[str]
    peer_group_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, valid: _Optional[bool] = ..., user_id: _Optional[str] = ..., user_email: _Optional[str] = ..., denied_reason: _Optional[str] = ..., peer_group_ids: _Optional[_Iterable[str]] = ..., peer_group_names: _Optional[_Iterable[str]] = ...) -> None: ...

class ValidateTunnelPeerRequest(_message.Message):
    __slots__ = ("tunnel_ip", "domain", "nbgw_account_id")
    TUNNEL_IP_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    NBGW_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    tunnel_ip: str
    domain: str
    nbgw_account_id: str
    def __init__(self, tunnel_ip: _Optional[str] = ..., domain: _Optional[str] = ..., nbgw_account_id: _Optional[str] = ...) -> None: ...

class ValidateTunnelPeerResponse(_message.Message):
    __slots__ = ("valid", "user_id", "user_email", "denied_reason", "session_token", "peer_group_ids", "peer_group_names")
    VALID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    USER_EMAIL_FIELD_NUMBER: _ClassVar[int]
    DENIED_REASON_FIELD_NUMBER: _ClassVar[int]
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PEER_GROUP_IDS_FIELD_NUMBER: _ClassVar[int]
    PEER_GROUP_NAMES_FIELD_NUMBER: _ClassVar[int]
    valid: bool
    user_id: str
    user_email: str
    denied_reason: str
    session_token: str
    peer_group_ids: _containers.RepeatedScalarFieldContainer[str]
    peer_group_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, valid: _Optional[bool] = ..., user_id: _Optional[str] = ..., user_email: _Optional[str] = ..., denied_reason: _Optional[str] = ..., session_token: _Optional[str] = ..., peer_group_ids: _Optional[_Iterable[str]] = ..., peer_group_names: _Optional[_Iterable[str]] = ...) -> None: ...

class SyncMappingsRequest(_message.Message):
    __slots__ = ("init", "ack")
    INIT_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    init: SyncMappingsInit
    ack: SyncMappingsAck
    def __init__(self, init: _Optional[_Union[SyncMappingsInit, _Mapping]] = ..., ack: _Optional[_Union[SyncMappingsAck, _Mapping]] = ...) -> None: ...

class SyncMappingsInit(_message.Message):
    __slots__ = ("proxy_id", "version", "started_at", "address", "capabilities", "nbgw_resume_revision")
    PROXY_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    NBGW_RESUME_REVISION_FIELD_NUMBER: _ClassVar[int]
    proxy_id: str
    version: str
    started_at: _timestamp_pb2.Timestamp
    address: str
    capabilities: ProxyCapabilities
    nbgw_resume_revision: int
    def __init__(self, proxy_id: _Optional[str] = ..., version: _Optional[str] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., address: _Optional[str] = ..., capabilities: _Optional[_Union[ProxyCapabilities, _Mapping]] = ..., nbgw_resume_revision: _Optional[int] = ...) -> None: ...

class SyncMappingsAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SyncMappingsResponse(_message.Message):
    __slots__ = ("mapping", "initial_sync_complete", "nbgw_revision", "nbgw_resumed")
    MAPPING_FIELD_NUMBER: _ClassVar[int]
    INITIAL_SYNC_COMPLETE_FIELD_NUMBER: _ClassVar[int]
    NBGW_REVISION_FIELD_NUMBER: _ClassVar[int]
    NBGW_RESUMED_FIELD_NUMBER: _ClassVar[int]
    mapping: _containers.RepeatedCompositeFieldContainer[ProxyMapping]
    initial_sync_complete: bool
    nbgw_revision: int
    nbgw_resumed: bool
    def __init__(self, mapping: _Optional[_Iterable[_Union[ProxyMapping, _Mapping]]] = ..., initial_sync_complete: _Optional[bool] = ..., nbgw_revision: _Optional[int] = ..., nbgw_resumed: _Optional[bool] = ...) -> None: ...

class CheckLLMPolicyLimitsRequest(_message.Message):
    __slots__ = ("account_id", "user_id", "group_ids", "provider_id", "model")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_IDS_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    user_id: str
    group_ids: _containers.RepeatedScalarFieldContainer[str]
    provider_id: str
    model: str
    def __init__(self, account_id: _Optional[str] = ..., user_id: _Optional[str] = ..., group_ids: _Optional[_Iterable[str]] = ..., provider_id: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class CheckLLMPolicyLimitsResponse(_message.Message):
    __slots__ = ("decision", "selected_policy_id", "attribution_group_id", "window_seconds", "deny_code", "deny_reason")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    SELECTED_POLICY_ID_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTION_GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DENY_CODE_FIELD_NUMBER: _ClassVar[int]
    DENY_REASON_FIELD_NUMBER: _ClassVar[int]
    decision: str
    selected_policy_id: str
    attribution_group_id: str
    window_seconds: int
    deny_code: str
    deny_reason: str
    def __init__(self, decision: _Optional[str] = ..., selected_policy_id: _Optional[str] = ..., attribution_group_id: _Optional[str] = ..., window_seconds: _Optional[int] = ..., deny_code: _Optional[str] = ..., deny_reason: _Optional[str] = ...) -> None: ...

class RecordLLMUsageRequest(_message.Message):
    __slots__ = ("account_id", "user_id", "group_id", "window_seconds", "tokens_input", "tokens_output", "cost_usd", "group_ids")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_INPUT_FIELD_NUMBER: _ClassVar[int]
    TOKENS_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    GROUP_IDS_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    user_id: str
    group_id: str
    window_seconds: int
    tokens_input: int
    tokens_output: int
    cost_usd: float
    group_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, account_id: _Optional[str] = ..., user_id: _Optional[str] = ..., group_id: _Optional[str] = ..., window_seconds: _Optional[int] = ..., tokens_input: _Optional[int] = ..., tokens_output: _Optional[int] = ..., cost_usd: _Optional[float] = ..., group_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class RecordLLMUsageResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
