"""HPACK (RFC 7541) for the gateway's HTTP/2 server connections, in fewer steps.

:class:`TableEncoder` and :class:`BlockDecoder` are the ``hpack`` package's
``Encoder`` and ``Decoder`` (``h2`` uses one of each per connection) with the
per-block work done in one loop each:

- the encoder finds a field in the dynamic table through two dicts kept with
  the table (``(name, value)`` and ``name`` to the newest entry holding them)
  instead of ``hpack``'s Python scan over every entry for every field, and
  Huffman-codes a literal with C joins (one bit string per byte, one
  ``int(..., 2)``) instead of a Python loop over big-integer shifts;
- the decoder reads integers, literals and table entries inline instead of
  through ~5 method calls per field;
- neither calls the stdlib ``logging`` (``hpack`` makes ~50 ``log.debug``
  calls per request, each costing a call and a level check).

Same results: the same header block bytes for the same fields and table state
(the same field representations, index choices and Huffman code), the same
decoded fields and field types (``HeaderTuple``/``NeverIndexedHeaderTuple``)
and the same table, and an ``HPACKDecodingError`` (or its subclasses) for
the same malformed blocks; differential tests in
``tests/proxy/test_h2_hpack.py``.  Anything else (dict input, ``raw=False``)
is ``hpack``'s own code.
"""

from __future__ import annotations

from typing import Any

from hpack import Decoder, Encoder
from hpack.exceptions import (
    HPACKDecodingError,
    InvalidTableIndex,
    InvalidTableSizeError,
    OversizedHeaderListError,
)
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.huffman_table import (
    HUFFMAN_COMPLETE,
    HUFFMAN_EMIT_SYMBOL,
    HUFFMAN_FAIL,
    HUFFMAN_TABLE,
)
from hpack.struct import HeaderTuple, NeverIndexedHeaderTuple
from hpack.table import HeaderTable

_STATIC = HeaderTable.STATIC_TABLE
_STATIC_LEN = HeaderTable.STATIC_TABLE_LENGTH
#: name -> (lowest static index of the name, value -> static index)
_STATIC_MAP = HeaderTable.STATIC_TABLE_MAPPING
#: the first dynamic table index
_FIRST_DYNAMIC = _STATIC_LEN + 1

#: each byte's Huffman code as a string of "0"/"1" (RFC 7541 Appendix B)
_HUFFMAN_BITS = tuple(f"{REQUEST_CODES[b]:0{REQUEST_CODES_LENGTH[b]}b}"
                      for b in range(256))
_new_tuple = tuple.__new__
#: the static table's fields as decoded, by index (1-61)
_STATIC_FIELDS: list[Any] = [None] + [_new_tuple(HeaderTuple, field) for field in _STATIC]


def huffman_encode(data: bytes) -> bytes:
    """``data`` Huffman-coded and padded with 1 bits (the same bytes as
    ``hpack``'s ``HuffmanEncoder``)."""
    if not data:
        return b""
    bits = "".join(map(_HUFFMAN_BITS.__getitem__, data))
    pad = -len(bits) % 8
    if pad:
        bits += "1" * pad
    return int(bits, 2).to_bytes(len(bits) >> 3, "big")


#: Huffman decoding a byte per step (built at import, ~10 ms, from hpack's
#: nibble-step table), at index ``state << 8 | byte``: the next state << 8
#: (:data:`_FAILED` where hpack fails: the next index is out of range), the
#: symbols emitted, and whether the string may end after that step (only
#: EOS-prefix padding left).  ~1.7 MB.
_NEXT: list[int] = []
_EMITTED: list[bytes] = []
_ENDS = bytearray()
_FAILED = 1 << 24


def _byte_steps() -> list[int]:
    nibbles = len(HUFFMAN_TABLE)
    single = [bytes((i,)) for i in range(256)]
    # the second nibble's step from each state: 16 entries per state
    row_next: list[list[int]] = []
    row_out: list[list[bytes]] = []
    row_end: list[bytes] = []
    for state in range(nibbles // 16):
        steps = HUFFMAN_TABLE[state * 16:state * 16 + 16]
        row_next.append([_FAILED if flags & HUFFMAN_FAIL else after << 8
                         for after, flags, _ in steps])
        row_out.append([single[symbol] if flags & HUFFMAN_EMIT_SYMBOL else b""
                        for _, flags, symbol in steps])
        row_end.append(bytes(flags & HUFFMAN_COMPLETE for _, flags, _ in steps))
    shared: dict[bytes, bytes] = {}
    failed_next = [_FAILED] * 16
    failed_out = [b""] * 16
    failed_end = bytes(16)
    nexts: list[int] = []
    emitted: list[bytes] = []
    ends = bytearray()
    for middle, flags, symbol in HUFFMAN_TABLE:  # the first nibble's step
        if flags & HUFFMAN_FAIL:
            nexts += failed_next
            emitted += failed_out
            ends += failed_end
            continue
        nexts += row_next[middle]
        ends += row_end[middle]
        if flags & HUFFMAN_EMIT_SYMBOL:
            first = single[symbol]
            emitted += [shared.setdefault(first + out, first + out)
                        for out in row_out[middle]]
        else:
            emitted += row_out[middle]
    _ENDS[:] = ends
    _EMITTED[:] = emitted
    _NEXT[:] = nexts
    return _NEXT


_byte_steps()


def huffman_decode(data: bytes) -> bytes:
    """A Huffman-coded string decoded a byte per step: the same octets as
    ``hpack``'s ``decode_huffman`` (two nibble steps per byte, each a
    Python loop turn with its checks) and an ``HPACKDecodingError`` for the
    same strings."""
    if not data:
        return b""
    if len(data) > _LONG:
        return _huffman_decode_long(data)
    nexts = _NEXT
    emitted = _EMITTED
    state = 0
    index = 0
    out: list[bytes] = []
    try:
        for byte in data:
            index = state | byte
            state = nexts[index]
            out.append(emitted[index])
    except IndexError:  # the step before failed
        raise HPACKDecodingError("Invalid Huffman string") from None
    if not _ENDS[index]:  # (0 for a failed step too)
        raise HPACKDecodingError("Invalid or incomplete Huffman string")
    return b"".join(out)


#: longer strings are decoded into a bytearray: ``bytes.join`` allocates an
#: 80-byte buffer view per piece (~90 bytes per received byte, ~95 MB for a
#: 1 MB string a client can send in HEADERS + CONTINUATION frames)
_LONG = 256


def _huffman_decode_long(data: bytes) -> bytes:
    """:func:`huffman_decode` for long strings: ~2 bytes per received byte."""
    nexts = _NEXT
    emitted = _EMITTED
    state = 0
    index = 0
    out = bytearray()
    try:
        for byte in data:
            index = state | byte
            state = nexts[index]
            out += emitted[index]
    except IndexError:  # the step before failed
        raise HPACKDecodingError("Invalid Huffman string") from None
    if not _ENDS[index]:  # (0 for a failed step too)
        raise HPACKDecodingError("Invalid or incomplete Huffman string")
    return bytes(out)


def encode_integer(value: int, prefix_bits: int) -> bytearray:
    """RFC 7541 5.1: ``value`` with an N-bit prefix (first byte's flag bits
    zero)."""
    top = (1 << prefix_bits) - 1
    if value < top:
        return bytearray((value,))
    out = bytearray((top,))
    value -= top
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)
    return out


def _string(name: bytes, huffman: bool) -> bytes:
    """A string literal (RFC 7541 5.2): length with the H bit, then octets."""
    if huffman:
        name = huffman_encode(name)
        n = len(name)
        if n < 127:
            return bytes((0x80 | n,)) + name
        head = encode_integer(n, 7)
        head[0] |= 0x80
        return bytes(head) + name
    n = len(name)
    if n < 127:
        return bytes((n,)) + name
    return bytes(encode_integer(n, 7)) + name


class FastTable(HeaderTable):
    """``hpack``'s header table (same entries, newest first, same size
    accounting and eviction order) without its ``logging`` calls."""

    def add(self, name: bytes, value: bytes) -> None:
        self.add_field((name, value))

    def add_field(self, field: Any) -> None:
        """Add the entry ``field`` (a ``(name, value)`` pair) as it is."""
        size = 32 + len(field[0]) + len(field[1])
        if size > self._maxsize:
            self._clear()
            return
        self.dynamic_entries.appendleft(field)
        self._current_size += size
        if self._current_size > self._maxsize:
            self._shrink()

    def _clear(self) -> None:
        self.dynamic_entries.clear()
        self._current_size = 0

    def _shrink(self) -> None:
        entries = self.dynamic_entries
        size = self._current_size
        maxsize = self._maxsize
        while size > maxsize:
            name, value = entries.pop()
            size -= 32 + len(name) + len(value)
        self._current_size = size

    @property  # type: ignore[override]
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, newmax: int) -> None:
        newmax = int(newmax)
        oldmax = self._maxsize
        self._maxsize = newmax
        self.resized = newmax != oldmax
        if newmax <= 0:
            self._clear()
        elif oldmax > newmax:
            self._shrink()


class FieldTable(FastTable):
    """The decoder's :class:`FastTable`: its entries are the
    ``HeaderTuple`` fields themselves, handed out as decoded (immutable)
    instead of a new tuple per indexed field."""

    def add(self, name: bytes, value: bytes) -> None:
        self.add_field(_new_tuple(HeaderTuple, (name, value)))


class IndexedTable(FastTable):
    """A :class:`FastTable` plus an index of its dynamic entries: each
    ``(name, value)`` and each name maps to the insertion number of the
    newest entry holding it, so a search is two dict lookups."""

    def __init__(self) -> None:
        super().__init__()
        #: insertion number of the newest entry
        self.added = 0
        self.pairs: dict[tuple[bytes, bytes], int] = {}
        self.names: dict[bytes, int] = {}

    def add(self, name: bytes, value: bytes) -> None:
        size = 32 + len(name) + len(value)
        if size > self._maxsize:
            self._clear()
            return
        self.dynamic_entries.appendleft((name, value))
        self.added += 1
        self.pairs[(name, value)] = self.added
        self.names[name] = self.added
        self._current_size += size
        if self._current_size > self._maxsize:
            self._shrink()

    def _clear(self) -> None:
        self.dynamic_entries.clear()
        self._current_size = 0
        self.pairs.clear()
        self.names.clear()

    def _shrink(self) -> None:
        entries = self.dynamic_entries
        size = self._current_size
        maxsize = self._maxsize
        # insertion number of the oldest entry
        oldest = self.added - len(entries) + 1
        pairs = self.pairs
        names = self.names
        while size > maxsize:
            name, value = entries.pop()
            size -= 32 + len(name) + len(value)
            if pairs.get((name, value)) == oldest:  # no newer copy
                del pairs[(name, value)]
            if names.get(name) == oldest:
                del names[name]
            oldest += 1
        self._current_size = size

    def search(self, name: bytes, value: bytes) -> tuple[int, bytes, bytes | None] | None:
        """``hpack``'s answer: a static full match, else the newest dynamic
        full match, else the static name, else the newest dynamic name."""
        static = _STATIC_MAP.get(name)
        if static is not None:
            index = static[1].get(value)
            if index is not None:
                return index, name, value
        seq = self.pairs.get((name, value))
        if seq is not None:
            return _FIRST_DYNAMIC + self.added - seq, name, value
        if static is not None:
            return static[0], name, None
        seq = self.names.get(name)
        if seq is not None:
            return _FIRST_DYNAMIC + self.added - seq, name, None
        return None


#: the largest dynamic table the encoder keeps, whatever larger size the
#: client's SETTINGS_HEADER_TABLE_SIZE allows (RFC 7541 4.2: the encoder may
#: use less; h2 hands it the client's value): a client announcing 2^32-1
#: would otherwise make every new response field an entry never evicted
MAX_ENCODER_TABLE = 4096


#: an indexed field's one byte (RFC 7541 6.1) for indices below 127
_INDEXED = [bytes((0x80 | index,)) for index in range(127)]


class TableEncoder(Encoder):
    """``hpack``'s ``Encoder`` over an :class:`IndexedTable`, one loop per
    block, its table at most :data:`MAX_ENCODER_TABLE` bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.header_table = IndexedTable()

    @property
    def header_table_size(self) -> int:
        return self.header_table.maxsize

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        Encoder.header_table_size.fset(self, min(value, MAX_ENCODER_TABLE))  # type: ignore[attr-defined]

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        if isinstance(headers, dict):
            return super().encode(headers, huffman)
        table = self.header_table
        out: list[bytes] = []
        if table.resized:
            out.append(self._encode_table_size_change())
            table.resized = False
        static_map = _STATIC_MAP
        pairs = table.pairs
        names = table.names
        for header in headers:
            if isinstance(header, HeaderTuple):
                sensitive = not header.indexable
            else:
                sensitive = len(header) > 2 and header[2]
            name = header[0]
            value = header[1]
            if type(name) is not bytes:
                name = (name if isinstance(name, str) else str(name)).encode("utf-8")
            if type(value) is not bytes:
                value = (value if isinstance(value, str) else str(value)).encode("utf-8")
            # the table search (IndexedTable.search, inline)
            index = 0
            static = static_map.get(name)
            if static is not None:
                index = static[1].get(value, 0)
                if index:
                    out.append(_INDEXED[index])  # static indices < 127
                    continue
            seq = pairs.get((name, value))
            if seq is not None:
                index = _FIRST_DYNAMIC + table.added - seq
                if index < 127:
                    out.append(_INDEXED[index])
                else:
                    field = encode_integer(index, 7)
                    field[0] |= 0x80
                    out.append(bytes(field))
                continue
            if static is not None:
                index = static[0]
            else:
                seq = names.get(name)
                if seq is not None:
                    index = _FIRST_DYNAMIC + table.added - seq
            if index:  # indexed name, literal value
                if sensitive:
                    prefix = encode_integer(index, 4)
                    prefix[0] |= 0x10
                else:
                    prefix = encode_integer(index, 6)
                    prefix[0] |= 0x40
                out.append(bytes(prefix) + _string(value, huffman))
            else:
                out.append((b"\x10" if sensitive else b"\x40") + _string(name, huffman)
                           + _string(value, huffman))
            if not sensitive:
                table.add(name, value)
        return b"".join(out)

    def _encode_table_size_change(self) -> bytes:
        """The size updates owed since the last block: the smallest size
        reached, then the final one when larger (RFC 7541 4.2).  ``hpack``
        sends every change in order, and a client whose limit is the final
        size refuses a larger intermediate one."""
        changes = self.table_size_changes
        self.table_size_changes = []
        if not changes:
            return b""
        smallest = min(changes)
        out = encode_integer(smallest, 5)
        out[0] |= 0x20
        if changes[-1] != smallest:
            final = encode_integer(changes[-1], 5)
            final[0] |= 0x20
            out += final
        return bytes(out)


#: octets of a header block per octet of the header list it decodes to, at
#: most (a Huffman string of n octets decodes to at least 8n/30 octets)
_MIN_EXPANSION = 30 / 8
#: room above that bound (the size updates a block may start with), and
#: enough that a short block is decoded (and fails) exactly as ``hpack`` does
_BLOCK_SLACK = 16384


class BlockDecoder(Decoder):
    """``hpack``'s ``Decoder``, one loop per block (``raw=True``, as ``h2``
    asks; ``raw=False`` is ``hpack``'s own)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_table = FieldTable()

    def decode(self, data: bytes, raw: bool = False) -> Any:
        if not raw:
            return super().decode(data, raw)
        data = bytes(data)
        table = self.header_table
        entries = table.dynamic_entries
        limit = self.max_header_list_size
        if len(data) > _MIN_EXPANSION * limit + _BLOCK_SLACK:
            # every field counts 32 plus its name and value, and no string
            # decodes to less than 8/30 of its octets (the longest Huffman
            # code is 30 bits): so long a block can only be refused, and it
            # is, before its strings are decoded (a 1 MB block of HEADERS +
            # CONTINUATION frames would hold the reactor ~0.1 s)
            raise OversizedHeaderListError(
                f"A header list larger than {limit} has been received")
        headers: list[Any] = []
        inflated = 0
        end = len(data)
        i = 0
        try:
            while i < end:
                first = data[i]
                if first & 0x80:  # indexed field
                    index = first & 0x7F
                    i += 1
                    if index == 0x7F:
                        index, i = _integer_tail(data, i, index)
                    if 0 < index <= _STATIC_LEN:
                        header = _STATIC_FIELDS[index]
                    elif _STATIC_LEN < index <= _STATIC_LEN + len(entries):
                        header = entries[index - _FIRST_DYNAMIC]
                    else:
                        raise InvalidTableIndex(f"Invalid table index {index}")
                elif first & 0x40 or not first & 0x20:  # a literal
                    if first & 0x40:
                        mask = 0x3F
                        indexing = True
                        kind: Any = HeaderTuple
                    else:
                        mask = 0x0F
                        indexing = False
                        kind = NeverIndexedHeaderTuple if first & 0x10 else HeaderTuple
                    index = first & mask
                    i += 1
                    if index:
                        if index == mask:
                            index, i = _integer_tail(data, i, index)
                        if 0 < index <= _STATIC_LEN:
                            name = _STATIC[index - 1][0]
                        elif _STATIC_LEN < index <= _STATIC_LEN + len(entries):
                            name = entries[index - _FIRST_DYNAMIC][0]
                        else:
                            raise InvalidTableIndex(f"Invalid table index {index}")
                    else:
                        name, i = _literal(data, i)
                    value, i = _literal(data, i)
                    header = _new_tuple(kind, (name, value))
                    if indexing:
                        table.add_field(header)
                else:  # dynamic table size update
                    if headers:
                        raise HPACKDecodingError(
                            "Table size update not at the start of the block")
                    size = first & 0x1F
                    i += 1
                    if size == 0x1F:
                        size, i = _integer_tail(data, i, size)
                    if size > self.max_allowed_table_size:
                        raise InvalidTableSizeError("Encoder exceeded max allowable table size")
                    self.header_table_size = size
                    continue
                headers.append(header)
                inflated += 32 + len(header[0]) + len(header[1])
                if inflated > limit:
                    raise OversizedHeaderListError(
                        f"A header list larger than {limit} has been received")
        except IndexError as err:
            raise HPACKDecodingError("Truncated header block") from err
        if table.maxsize > self.max_allowed_table_size:
            raise InvalidTableSizeError("Encoder did not shrink table size to within the max")
        return headers


def _integer_tail(data: bytes, i: int, number: int) -> tuple[int, int]:
    """The continuation bytes of an integer whose prefix was all ones (RFC
    7541 5.1), from ``data[i]``; at most as many as ``hpack`` accepts."""
    shift = 0
    start = i
    while True:
        byte = data[i]
        i += 1
        number += (byte & 0x7F) << shift
        if byte < 0x80:
            return number, i
        shift += 7
        if i - start >= 5:  # hpack: more than 5 octets with the prefix
            raise HPACKDecodingError("Variable integer representation is too long")


def _literal(data: bytes, i: int) -> tuple[bytes, int]:
    """A string literal at ``data[i]``: its octets (Huffman-decoded when
    flagged) and the index after it."""
    first = data[i]
    length = first & 0x7F
    i += 1
    if length == 0x7F:
        length, i = _integer_tail(data, i, length)
    end = i + length
    if end > len(data):
        raise HPACKDecodingError("Truncated header block")
    if first & 0x80:
        return huffman_decode(data[i:end]), end
    return data[i:end], end


__all__ = ["BlockDecoder", "FastTable", "FieldTable", "IndexedTable", "TableEncoder",
           "encode_integer", "huffman_decode", "huffman_encode"]
