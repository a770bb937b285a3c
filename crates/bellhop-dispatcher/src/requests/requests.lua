-- Service requests of one property, in Redis. Every key of a property shares its hash tag
-- ({req|<property>}), so each call is atomic in one slot of a Redis Cluster too.
--   <base>:r:<id>  hash: doc (the request as JSON, written by the node), v (version), status,
--                  dept, room, level, esc (ms of the last escalation, or "")
--   <base>:all     sorted set of ids by the time they were opened (for lists and retention)
--   <base>:due     sorted set of ids by the time their next escalation is due
-- ARGV[1] is the operation. Requests carry doc, v, level and esc back to the node.

local op = ARGV[1]

local function fields(key)
  return redis.call('HMGET', key, 'doc', 'v', 'level', 'esc')
end

-- Appends the fields of the request at `key` to the reply `out`.
local function append_fields(out, key)
  for _, x in ipairs(fields(key)) do
    out[#out + 1] = x
  end
end

-- Sets when request `id`'s next escalation is due in the due set `due_key` ('' or false: it has
-- none, so it leaves the set); the set lives `retention` ms after its last change.
local function schedule(due_key, id, due, retention)
  if due and due ~= '' then
    redis.call('ZADD', due_key, tonumber(due), id)
    redis.call('PEXPIRE', due_key, tonumber(retention))
  else
    redis.call('ZREM', due_key, id)
  end
end

if op == 'insert' then
  -- KEYS: hash, all, due. ARGV: op, id, doc, status, dept, room, opened, due|'', retention, now
  if redis.call('EXISTS', KEYS[1]) == 1 then
    return 0
  end
  local retention = tonumber(ARGV[9])
  redis.call('HSET', KEYS[1], 'doc', ARGV[3], 'v', 1, 'status', ARGV[4], 'dept', ARGV[5],
    'room', ARGV[6], 'level', 1, 'esc', '')
  redis.call('PEXPIRE', KEYS[1], retention)
  redis.call('ZADD', KEYS[2], tonumber(ARGV[7]), ARGV[2])
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. (tonumber(ARGV[10]) - retention))
  redis.call('PEXPIRE', KEYS[2], retention)
  schedule(KEYS[3], ARGV[2], ARGV[8], retention)
  return 1
elseif op == 'get' then
  -- KEYS: hash.
  return fields(KEYS[1])
elseif op == 'replace' then
  -- KEYS: hash, due. ARGV: op, id, expected version, doc, status, due|'', retention
  local v = redis.call('HGET', KEYS[1], 'v')
  if not v or v ~= ARGV[3] then
    return 0
  end
  redis.call('HSET', KEYS[1], 'doc', ARGV[4], 'status', ARGV[5])
  redis.call('HINCRBY', KEYS[1], 'v', 1)
  schedule(KEYS[2], ARGV[2], ARGV[6], ARGV[7])
  return 1
elseif op == 'list' then
  -- KEYS: all. ARGV: op, hash prefix, status|'', dept|'', room|'', limit, now, retention
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (tonumber(ARGV[7]) - tonumber(ARGV[8])))
  local ids = redis.call('ZREVRANGE', KEYS[1], 0, 9999)
  local limit = tonumber(ARGV[6])
  local out = {}
  for _, id in ipairs(ids) do
    if #out >= limit * 4 then
      break
    end
    local key = ARGV[2] .. id
    local f = redis.call('HMGET', key, 'status', 'dept', 'room')
    if not f[1] then
      redis.call('ZREM', KEYS[1], id)
    elseif (ARGV[3] == '' or f[1] == ARGV[3]) and (ARGV[4] == '' or f[2] == ARGV[4])
        and (ARGV[5] == '' or f[3] == ARGV[5]) then
      append_fields(out, key)
    end
  end
  return out
elseif op == 'claim' then
  -- KEYS: due. ARGV: op, hash prefix, now, lease until, limit
  local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[3]), 'LIMIT', 0,
    tonumber(ARGV[5]))
  local out = {}
  for _, id in ipairs(ids) do
    local key = ARGV[2] .. id
    if redis.call('HGET', key, 'status') ~= 'open' then
      redis.call('ZREM', KEYS[1], id)
    else
      redis.call('ZADD', KEYS[1], tonumber(ARGV[4]), id)
      append_fields(out, key)
    end
  end
  return out
elseif op == 'confirm' then
  -- KEYS: hash, due. ARGV: op, id, level, now, next|'', retention
  if redis.call('EXISTS', KEYS[1]) == 0 then
    redis.call('ZREM', KEYS[2], ARGV[2])
    return 0
  end
  local level = tonumber(ARGV[3])
  if tonumber(redis.call('HGET', KEYS[1], 'level')) < level then
    redis.call('HSET', KEYS[1], 'level', level, 'esc', ARGV[4])
    redis.call('HINCRBY', KEYS[1], 'v', 1)
  end
  -- Only an open request escalates again.
  schedule(KEYS[2], ARGV[2], redis.call('HGET', KEYS[1], 'status') == 'open' and ARGV[5],
    ARGV[6])
  return 1
elseif op == 'padd' then
  -- KEYS: the set of properties with requests. ARGV: op, property, retention
  redis.call('SADD', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
  return 1
elseif op == 'plist' then
  return redis.call('SMEMBERS', KEYS[1])
end
return redis.error_reply('unknown operation ' .. tostring(op))
