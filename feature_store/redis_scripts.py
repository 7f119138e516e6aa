"""Lua scripts of the Redis backend (run with EVALSHA, loaded on NOSCRIPT).

Standalone Redis: APPEND applies one event atomically: the idempotency
check, the log entry (XADD) and the state change in one script, so a reader
never sees a state change that is not in the log, and an event id is applied
at most once.

Redis Cluster (the user's keys and the stream live in different slots):
LOG_ONCE runs first on the stream's slot: it XADDs the event unless its log
guard key already holds a stream id, and returns the id. APPLY then runs on
the user's slot: the same idempotency check and state change as APPEND,
recording the stream id from LOG_ONCE. A call acknowledges only after both;
a retry after a failure in between finds the guard (no second log entry) and
completes APPLY.

APPEND/APPLY return codes: 1 applied now, 0 duplicate (the id is known), 2
the id was applied by an earlier attempt of the *same* call (its nonce is the
idempotency key's value), which the caller counts as accepted: a retried
call reports the same counts as one that succeeded at once.
"""

from __future__ import annotations

# Shared argument layout of APPEND and APPLY.
# KEYS: 1 idempotency key, 2 positives list, 3 dislikes zset, 4 seen zset,
#       5 the user's log-entry list, [APPEND only: 6 the log stream]
# ARGV: 1 nonce, 2 event_id, 3 user_id, 4 item_id, 5 type, 6 role, 7 ts, 8 received_at,
#       9 positives_cap, 10 dislikes_cap, 11 seen_cap, 12 idempotency_ttl, 13 state_ttl,
#       [APPLY only: 14 the stream id LOG_ONCE returned]
_IDEMPOTENCY = r"""
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[12]) then
  if redis.call('GET', KEYS[1]) == ARGV[1] then return 2 end
  return 0
end
"""

_XADD = r"""
local sid = redis.call('XADD', KEYS[6], '*', 'event_id', ARGV[2], 'user_id', ARGV[3],
  'item_id', ARGV[4], 'type', ARGV[5], 'ts', ARGV[7], 'received_at', ARGV[8])
"""

_STATE = r"""
redis.call('RPUSH', KEYS[5], sid .. ' ' .. ARGV[2])
local ts = tonumber(ARGV[7])
local function ts_of(entry) return tonumber(string.match(entry, '^[^|]*')) end
if ARGV[6] == 'positive' then
  local entry = ARGV[7] .. '|' .. ARGV[4]
  local last = redis.call('LINDEX', KEYS[2], -1)
  if (not last) or ts_of(last) <= ts then
    redis.call('RPUSH', KEYS[2], entry)
  else
    -- Late event: insert it after the last entry not newer than it (ties keep arrival order).
    local all = redis.call('LRANGE', KEYS[2], 0, -1)
    local at = 0
    for i = #all, 1, -1 do
      if ts_of(all[i]) <= ts then at = i; break end
    end
    table.insert(all, at + 1, entry)
    redis.call('DEL', KEYS[2])
    for i = 1, #all, 1000 do
      redis.call('RPUSH', KEYS[2], unpack(all, i, math.min(i + 999, #all)))
    end
  end
  redis.call('LTRIM', KEYS[2], -tonumber(ARGV[9]), -1)
elseif ARGV[6] == 'dislike' then
  redis.call('ZADD', KEYS[3], 'GT', ts, ARGV[4])
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -tonumber(ARGV[10]) - 1)
end
redis.call('ZADD', KEYS[4], 'GT', ts, ARGV[4])
redis.call('ZREMRANGEBYRANK', KEYS[4], 0, -tonumber(ARGV[11]) - 1)
local ttl = tonumber(ARGV[13])
if ttl > 0 then
  for i = 2, 4 do redis.call('EXPIRE', KEYS[i], ttl) end
end
return 1
"""

APPEND = _IDEMPOTENCY + _XADD + _STATE
APPLY = _IDEMPOTENCY + "local sid = ARGV[14]\n" + _STATE

# KEYS: 1 log guard, 2 the log stream
# ARGV: 1 guard ttl, 2 event_id, 3 user_id, 4 item_id, 5 type, 6 ts, 7 received_at
LOG_ONCE = r"""
local sid = redis.call('GET', KEYS[1])
if sid then return sid end
sid = redis.call('XADD', KEYS[2], '*', 'event_id', ARGV[2], 'user_id', ARGV[3],
  'item_id', ARGV[4], 'type', ARGV[5], 'ts', ARGV[6], 'received_at', ARGV[7])
redis.call('SET', KEYS[1], sid, 'EX', ARGV[1])
return sid
"""

# Standalone erasure. KEYS: 1 positives, 2 dislikes, 3 seen, 4 the user's log-entry list,
# 5 the log stream. ARGV: 1 the user's idempotency-key prefix ("<tag>:e:", same slot).
FORGET = r"""
local entries = redis.call('LRANGE', KEYS[4], 0, -1)
local removed = 0
for _, e in ipairs(entries) do
  local sp = string.find(e, ' ', 1, true)
  removed = removed + redis.call('XDEL', KEYS[5], string.sub(e, 1, sp - 1))
  redis.call('DEL', ARGV[1] .. string.sub(e, sp + 1))
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
return removed
"""

# Cluster erasure, step 1 on the stream's slot. KEYS: 1 the stream, 2.. log guards.
# ARGV: the stream ids to delete.
FORGET_LOG = r"""
local removed = 0
for i = 1, #ARGV do removed = removed + redis.call('XDEL', KEYS[1], ARGV[i]) end
for i = 2, #KEYS do redis.call('DEL', KEYS[i]) end
return removed
"""

# Cluster erasure, step 2 on the user's slot: FORGET without the stream.
FORGET_STATE = r"""
local entries = redis.call('LRANGE', KEYS[4], 0, -1)
for _, e in ipairs(entries) do
  local sp = string.find(e, ' ', 1, true)
  redis.call('DEL', ARGV[1] .. string.sub(e, sp + 1))
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
return #entries
"""

ALL = (APPEND, APPLY, LOG_ONCE, FORGET, FORGET_LOG, FORGET_STATE)
