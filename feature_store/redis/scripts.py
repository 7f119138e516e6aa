"""Lua scripts of the Redis backend (run with EVALSHA, loaded on NOSCRIPT).

Redis does not roll a script back when a command in it fails, so every
script first checks the type of each key it touches and does every read,
and only then writes: a script either fails before its first write or runs
to the end. (The ``#!lua`` shebang also makes Redis refuse a writing script
up front when it is out of memory, instead of at its first write.)

Standalone Redis: APPEND applies one event atomically: the idempotency
check, the log entry (XADD) and the state change in one script, so a reader
never sees a state change that is not in the log, and an event is applied
at most once.

Redis Cluster (the user's keys and the stream live in different slots), per
event, in three single-slot steps:

1. CLAIM (user slot): a known id ends here (duplicate, or applied by an
   earlier attempt of this call); otherwise the id joins the user's
   ``pend`` set, so an erasure finds the event even if the call dies after
   step 2.
2. LOG_ONCE (stream slot): XADD unless the event's guard already holds a
   stream id; record the guard. A retry or a concurrent call with the same
   id reuses the entry, so the event is in the log once. Guards live as long
   as their stream entry (the trim removes them, except for events still
   pending), longer than any call.
3. APPLY (user slot): the same idempotency check and state change as APPEND,
   recording the stream id from LOG_ONCE; the id leaves ``pend``.

APPEND/CLAIM/APPLY return codes: 1 applied now (CLAIM: claimed, go on), 0
duplicate (the id is known), 2 the id was applied by an earlier attempt of
the *same* call (its nonce is the id's value in the idempotency hash), which
the caller counts as accepted: a retried call reports the same counts as one
that succeeded at once.
"""

from __future__ import annotations

import hashlib

_HEADER = "#!lua\n"
_HEADER_CROSS_SLOT = "#!lua flags=allow-cross-slot-keys\n"


def _type_checks(kinds: list[str]) -> str:
    """Lua that fails (before any write) unless KEYS[i] is absent or of type kinds[i]."""
    table = ", ".join(f"'{k}'" for k in kinds)
    return f"""
local kinds = {{{table}}}
for i = 1, #kinds do
  local t = redis.call('TYPE', KEYS[i])['ok']
  if t ~= 'none' and t ~= kinds[i] then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' is a ' .. t .. ', expected a ' ..
      kinds[i] .. '; nothing was written')
  end
end
"""


# Shared argument layout of APPEND and APPLY.
# KEYS: 1 idempotency hash, 2 positives list, 3 dislikes zset, 4 seen zset,
#       5 the user's log-entry zset, 6 APPEND: the log stream / APPLY: the pending set
# ARGV: 1 nonce, 2 event_id, 3 user_id, 4 item_id, 5 type, 6 role, 7 ts, 8 received_at,
#       9 positives_keep, 10 dislikes_keep, 11 seen_keep, 12 idempotency_ttl, 13 state_ttl,
#       [APPLY only: 14 the stream id LOG_ONCE returned]
_IDEMPOTENCY = r"""
local known = redis.call('HGET', KEYS[1], ARGV[2])
if known then
  if known == ARGV[1] then return 2 end
  return 0
end
"""

# Reads of the positives list, before any write: a late event needs the whole list.
_READS = r"""
local ts = tonumber(ARGV[7])
local function ts_of(entry) return tonumber(string.match(entry, '^[^|]*')) end
local late = nil
if ARGV[6] == 'positive' then
  local last = redis.call('LINDEX', KEYS[2], -1)
  if last and ts_of(last) > ts then late = redis.call('LRANGE', KEYS[2], 0, -1) end
end
"""

_XADD = r"""
local sid = redis.call('XADD', KEYS[6], '*', 'event_id', ARGV[2], 'user_id', ARGV[3],
  'item_id', ARGV[4], 'type', ARGV[5], 'ts', ARGV[7], 'received_at', ARGV[8])
"""

_STATE = r"""
redis.call('HSET', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[5], tonumber(string.match(sid, '^%d+')), sid .. ' ' .. ARGV[2])
if ARGV[6] == 'positive' then
  local entry = ARGV[7] .. '|' .. ARGV[4]
  if not late then
    redis.call('RPUSH', KEYS[2], entry)
  else
    -- Late event: insert it after the last entry not newer than it (ties keep arrival order).
    local at = 0
    for i = #late, 1, -1 do
      if ts_of(late[i]) <= ts then at = i; break end
    end
    table.insert(late, at + 1, entry)
    redis.call('DEL', KEYS[2])
    for i = 1, #late, 1000 do
      redis.call('RPUSH', KEYS[2], unpack(late, i, math.min(i + 999, #late)))
    end
  end
  redis.call('LTRIM', KEYS[2], -tonumber(ARGV[9]), -1)
elseif ARGV[6] == 'dislike' then
  redis.call('ZADD', KEYS[3], 'GT', ts, ARGV[4])
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -tonumber(ARGV[10]) - 1)
end
redis.call('ZADD', KEYS[4], 'GT', ts, ARGV[4])
redis.call('ZREMRANGEBYRANK', KEYS[4], 0, -tonumber(ARGV[11]) - 1)
local idem_ttl = tonumber(ARGV[12])
if idem_ttl > 0 then redis.call('EXPIRE', KEYS[1], idem_ttl) end
local state_ttl = tonumber(ARGV[13])
if state_ttl > 0 then
  -- Positives and seen only: a dislike never expires (it must stay filtered).
  redis.call('EXPIRE', KEYS[2], state_ttl)
  redis.call('EXPIRE', KEYS[4], state_ttl)
end
return 1
"""

APPEND = (
    _HEADER_CROSS_SLOT
    + _type_checks(["hash", "list", "zset", "zset", "zset", "stream"])
    + _IDEMPOTENCY
    + _READS
    + _XADD
    + _STATE
)
APPLY = (
    _HEADER
    + _type_checks(["hash", "list", "zset", "zset", "zset", "set"])
    + _IDEMPOTENCY
    + _READS
    + "local sid = ARGV[14]\nredis.call('SREM', KEYS[6], ARGV[2])\n"
    + _STATE
)

# Cluster step 1. KEYS: 1 idempotency hash, 2 pending set. ARGV: 1 nonce, 2 event_id.
CLAIM = (
    _HEADER
    + _type_checks(["hash", "set"])
    + _IDEMPOTENCY
    + "redis.call('SADD', KEYS[2], ARGV[2])\nreturn 1\n"
)

# Cluster step 2. KEYS: 1 guards hash, 2 the log stream.
# ARGV: 1 guard field, 2 event_id, 3 user_id, 4 item_id, 5 type, 6 ts, 7 received_at,
#       8 idempotency_ttl (with a window, a guard older than it is stale: the resend is new)
LOG_ONCE = (
    _HEADER
    + _type_checks(["hash", "stream"])
    + r"""
local sid = redis.call('HGET', KEYS[1], ARGV[1])
local ttl = tonumber(ARGV[8])
if sid and ttl > 0 then
  local t = redis.call('TIME')
  local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if tonumber(string.match(sid, '^%d+')) < now_ms - ttl * 1000 then sid = nil end
end
if sid then return sid end
sid = redis.call('XADD', KEYS[2], '*', 'event_id', ARGV[2], 'user_id', ARGV[3],
  'item_id', ARGV[4], 'type', ARGV[5], 'ts', ARGV[6], 'received_at', ARGV[7])
redis.call('HSET', KEYS[1], ARGV[1], sid)
return sid
"""
)

# Standalone erasure. KEYS: 1 positives, 2 dislikes, 3 seen, 4 ids, 5 the user's log-entry
# zset, 6 pending set, 7 the log stream, 8 tombstones. ARGV: 1 user hash, 2 now.
FORGET = (
    _HEADER_CROSS_SLOT
    + _type_checks(["list", "zset", "zset", "hash", "zset", "set", "stream", "hash"])
    + r"""
local entries = redis.call('ZRANGE', KEYS[5], 0, -1)
local removed = 0
for _, e in ipairs(entries) do
  local sp = string.find(e, ' ', 1, true)
  removed = removed + redis.call('XDEL', KEYS[7], string.sub(e, 1, sp - 1))
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6])
redis.call('HSET', KEYS[8], ARGV[1], ARGV[2])
return removed
"""
)

# Cluster erasure, step 1 on the stream's slot. KEYS: 1 the stream, 2 guards, 3 tombstones.
# ARGV: 1 user hash, 2 now, 3 n = number of stream ids, 4..3+n stream ids, then guard fields
# (of the listed entries and of the user's pending events).
FORGET_LOG = (
    _HEADER
    + _type_checks(["stream", "hash", "hash"])
    + r"""
local n = tonumber(ARGV[3])
local removed = 0
for i = 4, 3 + n do removed = removed + redis.call('XDEL', KEYS[1], ARGV[i]) end
for i = 4 + n, #ARGV do
  local sid = redis.call('HGET', KEYS[2], ARGV[i])
  if sid then
    removed = removed + redis.call('XDEL', KEYS[1], sid)
    redis.call('HDEL', KEYS[2], ARGV[i])
  end
end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
return removed
"""
)

# Cluster erasure, step 2 on the user's slot. KEYS: 1 positives, 2 dislikes, 3 seen, 4 ids,
# 5 log-entry zset, 6 pending set. ARGV: 1 n = number of log entries handled, 2..1+n those
# entries, then the pending ids handled. Removes only what step 1 handled, so an append that
# landed in between stays findable; returns what is left (the caller loops until 0).
FORGET_STATE = (
    _HEADER
    + _type_checks(["list", "zset", "zset", "hash", "zset", "set"])
    + r"""
local n = tonumber(ARGV[1])
for i = 2, 1 + n do redis.call('ZREM', KEYS[5], ARGV[i]) end
for i = 2 + n, #ARGV do redis.call('SREM', KEYS[6], ARGV[i]) end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
return redis.call('ZCARD', KEYS[5]) + redis.call('SCARD', KEYS[6])
"""
)

# Store identity, made once. KEYS: 1 meta hash. ARGV: field/value pairs to set when absent.
INIT = (
    _HEADER
    + _type_checks(["hash"])
    + r"""
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('HSET', KEYS[1], unpack(ARGV)) end
return redis.call('HGETALL', KEYS[1])
"""
)

# Users' state in one call (standalone Redis, Sentinel, a one-shard cluster).
# KEYS: per user, positives list, dislikes zset and, when ARGV[3] > 0, seen zset.
# ARGV: 1 positives cap, 2 dislikes cap, 3 seen cap (0 = no seen).
# Returns, per user, the LRANGE, the flat ZRANGE WITHSCORES and the seen ZRANGE:
# the replies a pipeline of those commands would give, in one round trip and
# without one command frame per key.
READ = (
    "#!lua flags=no-writes,allow-cross-slot-keys\n"
    + r"""
local pcap, dcap, scap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local step = 2
if scap > 0 then step = 3 end
local out = {}
for i = 1, #KEYS, step do
  out[#out + 1] = redis.call('LRANGE', KEYS[i], -pcap, -1)
  out[#out + 1] = redis.call('ZRANGE', KEYS[i + 1], -dcap, -1, 'WITHSCORES')
  if step == 3 then out[#out + 1] = redis.call('ZRANGE', KEYS[i + 2], -scap, -1) end
end
return out
"""
)

ALL = {
    "APPEND": APPEND,
    "APPLY": APPLY,
    "CLAIM": CLAIM,
    "LOG_ONCE": LOG_ONCE,
    "FORGET": FORGET,
    "FORGET_LOG": FORGET_LOG,
    "FORGET_STATE": FORGET_STATE,
    "INIT": INIT,
    "READ": READ,
}
#: SHA1 of each script, as EVALSHA names it.
SHA = {name: hashlib.sha1(src.encode()).hexdigest() for name, src in ALL.items()}
