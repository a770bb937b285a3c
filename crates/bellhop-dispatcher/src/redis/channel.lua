-- Bellhop's channel script: every operation on one channel, atomically, in one call (see the docs
-- of redis/mod.rs, keys.rs and script.rs). KEYS: log, meta, read markers, presence sessions,
-- presence users, the origin of the channel's slot (or of the server), and for a publish with an
-- idempotency key the key remembering its result. ARGV: operation, retention (ms), presence TTL
-- (ms), then the operation's arguments. The operation 'origin' takes one key only (an origin).
--
-- Reads ('read', 'mark' of a channel nobody published to, 'unread', 'presence' of an empty
-- channel) write nothing: a channel exists in Redis only once something was published to it or
-- someone joined it.
local log, meta, markers, sessions, users = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local slot_origin = KEYS[6]
local op, retention, presence_ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local cutoff = math.max(now - retention, 0)

-- Lua prints large numbers with exponents: integers are written with this instead.
local function int(n)
  return string.format('%.0f', n)
end

local cutoff_id = int(cutoff) .. '-0'
local max_id = '18446744073709551615-18446744073709551615'
local just_before_now = int(now - 1) .. '-0'

if op == 'origin' then
  -- KEYS[1]: an origin, set once to just below now: where this slot's (or server's) data starts.
  -- A server that lost its data loses it too, and the next one set is later than every position
  -- handed out before.
  redis.call('SET', KEYS[1], just_before_now, 'NX')
  return redis.call('GET', KEYS[1])
end

-- The two parts of a canonical stream ID ("<ms>-<seq>", no leading zeros), as strings.
local function parts(id)
  return string.match(id, '^(%d+)-(%d+)$')
end

-- Exact comparison of canonical decimal strings of any length (offsets are u64 pairs).
local function cmp_dec(a, b)
  if #a ~= #b then
    return #a < #b and -1 or 1
  end
  if a == b then
    return 0
  end
  return a < b and -1 or 1
end

local function id_less(a, b)
  local am, as = parts(a)
  local bm, bs = parts(b)
  local c = cmp_dec(am, bm)
  if c == 0 then
    c = cmp_dec(as, bs)
  end
  return c < 0
end

local function id_max(a, b)
  if id_less(a, b) then
    return b
  end
  return a
end

-- The XRANGE start of the retained entries strictly after `id` (all of them when `id` is
-- false), or false when no entry can follow it.
local function start_after(id)
  if not id or tonumber((parts(id))) < cutoff then
    return cutoff_id
  end
  if id == max_id then
    return false
  end
  return '(' .. id
end

-- Where the channel's history starts: positions before it may have lost messages. The later of
-- the channel's origin (or, for a channel never published to, its slot's origin; just below now
-- when that is missing too, after a data loss), the retention cut-off and the newest entry
-- trimmed for length.
local function floor()
  local origin = redis.call('HGET', meta, 'origin') or redis.call('GET', slot_origin)
      or just_before_now
  local result = id_max(origin, cutoff_id)
  local trimmed = redis.call('HGET', meta, 'trimmed')
  if trimmed then
    result = id_max(result, trimmed)
  end
  return result
end

-- The position handed out for a channel with nothing retained, without writing it down: a second
-- below now (at most half the retention), so a Redis clock that steps back by less than that
-- cannot give a later message an offset at or below it; and not below the newest position handed
-- out or the channel's floor.
local function empty_position(last)
  local margin = math.min(1000, math.floor(retention / 2))
  local position = id_max(int(math.max(now - margin, 0)) .. '-0', floor())
  if last then
    position = id_max(position, last)
  end
  return position
end

-- Keeps `key` for at least `ms` more milliseconds (a longer life it already has is kept).
local function extend(key, ms)
  if ms > 0 and redis.call('PTTL', key) < ms then
    redis.call('PEXPIRE', key, int(ms))
  end
end

-- A field of a stream entry ({id, {name, value, ...}}).
local function field(entry, name)
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == name then
      return fields[i + 1]
    end
  end
  return false
end

-- The retained entries after `marker`: sequence numbers are contiguous, so this is the newest
-- sequence minus the first one after the marker, plus one.
local function unread(marker)
  local start = start_after(marker)
  if not start then
    return 0
  end
  local first = redis.call('XRANGE', log, start, '+', 'COUNT', 1)
  if #first == 0 then
    return 0
  end
  local seq = tonumber(field(first[1], 's'))
  local newest = tonumber(redis.call('HGET', meta, 'seq') or '')
  if seq and newest and newest >= seq then
    return newest - seq + 1
  end
  -- The meta hash was lost (evicted): count instead, capped.
  return #redis.call('XRANGE', log, start, '+', 'COUNT', 10000)
end

-- Forgets the sessions whose broker stopped refreshing them.
local function expire_sessions()
  local expired = redis.call('ZRANGEBYSCORE', sessions, '-inf', int(now))
  for _, member in ipairs(expired) do
    redis.call('ZREM', sessions, member)
    local user = string.match(member, '^(.-)\31')
    if user and redis.call('HINCRBY', users, user, -1) <= 0 then
      redis.call('HDEL', users, user)
    end
  end
end

if op == 'publish' then
  -- ARGV[4]: the envelope (JSON); ARGV[5]: the live pub/sub channel; ARGV[6]: the publisher's
  -- deadline (ms); ARGV[7]: 'PUBLISH', or 'SPUBLISH' in a cluster (the live channel carries
  -- the keys' hash tag, so it is on this shard). A call that reaches the server after its
  -- deadline (queued in a client across a reconnect) has already been answered `unavailable`:
  -- storing it now would make the publisher's retry a duplicate. ARGV[8]: the most entries the
  -- channel keeps. With an idempotency key (KEYS[7]): ARGV[9], how long its result is remembered
  -- (ms); ARGV[10], the message id.
  local announce = ARGV[7]
  if announce ~= 'PUBLISH' and announce ~= 'SPUBLISH' then
    return redis.error_reply('bellhop channel script: bad publish command ' .. tostring(announce))
  end
  if now > tonumber(ARGV[6]) then
    return {'expired', int(now)}
  end
  local idempotency = KEYS[7]
  if idempotency then
    -- A repeat within the window: the original's offset and message id, nothing stored.
    local original = redis.call('GET', idempotency)
    if original then
      local offset, message_id = string.match(original, '^(%S+) (.*)$')
      return {'duplicate', offset, message_id}
    end
  end
  local last = redis.call('HGET', meta, 'last')
  if not last then
    local top = redis.call('XREVRANGE', log, '+', '-', 'COUNT', 1)
    if #top > 0 then
      last = top[1][1]
    end
  end
  -- Offset::next_after: the server's millisecond, or one past the newest offset stored (the
  -- positions reads hand out for an empty channel stay below now, see empty_position).
  local id_ms, id_seq = now, 0
  if last then
    local ms, seq = parts(last)
    if tonumber(ms) >= now then
      id_ms, id_seq = tonumber(ms), tonumber(seq) + 1
    end
  end
  local id = int(id_ms) .. '-' .. int(id_seq)
  local seq = tonumber(redis.call('HGET', meta, 'seq') or '0') + 1
  if redis.call('HEXISTS', meta, 'origin') == 0 then
    -- A new channel's history starts where its slot's does (positions handed out by reads of it
    -- while it was empty stay good); one whose meta went while its log stayed starts now.
    redis.call('SET', slot_origin, just_before_now, 'NX')
    local origin = redis.call('GET', slot_origin)
    if redis.call('XLEN', log) > 0 then
      origin = just_before_now
    end
    redis.call('HSET', meta, 'origin', origin)
  end
  redis.call('XADD', log, 'MINID', '~', int(cutoff), id, 's', int(seq), 'e', ARGV[4])
  -- The length cap (ARGV[8]), exactly (XADD takes one trim strategy; MINID is the one above). The
  -- newest entry trimmed for length is the channel's `trimmed` floor: a `since` before it is not
  -- recovered. At most 1,000 entries go per publish, so a cap lowered by configuration costs
  -- several publishes, not one long script.
  local excess = redis.call('XLEN', log) - tonumber(ARGV[8])
  if excess > 0 then
    local gone = redis.call('XRANGE', log, '-', '+', 'COUNT', math.min(excess, 1000))
    redis.call('XTRIM', log, 'MAXLEN', '=', redis.call('XLEN', log) - #gone)
    redis.call('HSET', meta, 'trimmed', gone[#gone][1])
  end
  redis.call('HSET', meta, 'seq', int(seq), 'last', id)
  local keep = id_ms + retention - now
  extend(log, keep)
  extend(meta, keep)
  extend(markers, keep)
  if idempotency then
    redis.call('SET', idempotency, id .. ' ' .. ARGV[10], 'PX', ARGV[9])
  end
  redis.call(announce, ARGV[5],
    '{"k":"m","o":"' .. id .. '","s":' .. int(seq) .. ',"e":' .. ARGV[4] .. '}')
  return {id, int(seq)}
elseif op == 'read' then
  -- ARGV[4]: since ('' for the newest entries); ARGV[5]: limit.
  local since, limit = ARGV[4], tonumber(ARGV[5])
  local entries = {}
  if since == '' then
    if limit > 0 then
      entries = redis.call('XREVRANGE', log, '+', cutoff_id, 'COUNT', limit)
    end
  else
    local start = start_after(since)
    if start then
      entries = redis.call('XRANGE', log, start, '+', 'COUNT', limit + 1)
    end
  end
  local last = redis.call('HGET', meta, 'last')
  local newest = redis.call('XREVRANGE', log, '+', cutoff_id, 'COUNT', 1)
  local position
  if #newest > 0 then
    position = newest[1][1]
    if last then
      position = id_max(position, last)
    end
  else
    position = empty_position(last)
  end
  return {int(now), floor(), position, entries}
elseif op == 'mark' then
  -- ARGV[4]: user; ARGV[5]: the offset read up to, clamped to the newest position handed out
  -- (a marker beyond it would hide every later message). On a channel nobody published to, no
  -- marker is saved (it would precede nothing): the answer is the floor and nothing unread.
  if redis.call('EXISTS', meta) == 0 and redis.call('XLEN', log) == 0 then
    return {floor(), 0}
  end
  local requested = ARGV[5]
  local newest = redis.call('HGET', meta, 'last') or (int(now - 1) .. '-0')
  if id_less(newest, requested) then
    requested = newest
  end
  local marker = redis.call('HGET', markers, ARGV[4])
  if not marker or id_less(marker, requested) then
    marker = requested
    redis.call('HSET', markers, ARGV[4], marker)
  end
  extend(markers, retention)
  return {marker, unread(marker)}
elseif op == 'unread' then
  -- ARGV[4]: user.
  return unread(redis.call('HGET', markers, ARGV[4]))
elseif op == 'join' then
  -- ARGV[4]: user; ARGV[5]: session. Also how a session is refreshed.
  expire_sessions()
  local added = redis.call('ZADD', sessions, int(now + presence_ttl), ARGV[4] .. '\31' .. ARGV[5])
  local first = 0
  if added == 1 and redis.call('HINCRBY', users, ARGV[4], 1) == 1 then
    first = 1
  end
  extend(sessions, presence_ttl)
  extend(users, presence_ttl)
  return first
elseif op == 'leave' then
  -- ARGV[4]: user; ARGV[5]: session.
  expire_sessions()
  local last = 0
  if redis.call('ZREM', sessions, ARGV[4] .. '\31' .. ARGV[5]) == 1
      and redis.call('HINCRBY', users, ARGV[4], -1) <= 0 then
    redis.call('HDEL', users, ARGV[4])
    last = 1
  end
  return last
elseif op == 'presence' then
  expire_sessions()
  return redis.call('HKEYS', users)
end
return redis.error_reply('bellhop channel script: unknown operation ' .. tostring(op))
