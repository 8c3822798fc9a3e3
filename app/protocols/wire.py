"""Reading protobuf's wire format without building the message: what a message would cost
to parse, known before the parser spends it.
"""

from __future__ import annotations


def fields_in(raw: bytes, descriptor, limit: int) -> int:
    """How many fields the protobuf wire bytes `raw` of a `descriptor` message hold, nested
    messages' fields included, and each element of a packed array of integers (one of
    floats is one field: it costs what its bytes do), counting no further than past
    `limit`.

    Bytes that are not a valid message count as what was read of them: the parser then
    refuses them.
    """
    data, count = memoryview(raw), 0
    stack = [(descriptor, 0, len(data))]  # messages being read: type, offset, end
    while stack and count <= limit:
        message, offset, end = stack.pop()
        while offset < end and count <= limit:
            tag, offset = _varint(data, offset)
            count += 1
            wire_type = tag & 7
            if wire_type == 0:
                _, offset = _varint(data, offset)
            elif wire_type == 1:
                offset += 8
            elif wire_type == 5:
                offset += 4
            elif wire_type == 2:
                length, offset = _varint(data, offset)
                field = message.fields_by_number.get(tag >> 3) if message else None
                if field is not None and field.message_type is not None and length:
                    stack.append((message, offset + length, end))  # the rest, after it
                    message, end = field.message_type, min(offset + length, end)
                    continue
                if field is not None and field.is_repeated and field.type in VARINT_TYPES:
                    # A packed array of varints: each element becomes an 8-byte integer.
                    count += _varints_in(raw, offset, length, limit - count)
                offset += length
            elif wire_type in (3, 4):
                pass  # a group's start or end: the parser skips what lies between (counted)
            else:
                return count  # not a message: the parser says so
    return count


# FieldDescriptor's types that are varints: int64, uint64, int32, bool, uint32, enum,
# sint32, sint64.
VARINT_TYPES = frozenset({3, 4, 5, 8, 13, 14, 17, 18})
_CONTINUED = bytes(range(0x80, 0x100))  # a varint's bytes but its last


def _varints_in(raw: bytes, offset: int, length: int, room: int) -> int:
    """How many varints the `length` bytes at `offset` hold (each ends with a byte under
    0x80), or room + 1 when they must hold more than `room` (a varint is at most 10 bytes)."""
    if length > 10 * (room + 1):
        return room + 1
    return len(raw[offset: offset + length].translate(None, _CONTINUED))


def _varint(data: memoryview, offset: int) -> tuple[int, int]:
    """The varint at `offset` and the offset after it (at most 10 bytes; past the end, the
    end: the caller's count stops there)."""
    value = 0
    for shift in range(0, 70, 7):
        if offset >= len(data):
            return 0, len(data)
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
    return value, offset
