"""The Lua half of :mod:`connectivity.backends.redis`: the circuit state machine, run inside Redis.

Theory of operation: each decision is one script, so it is atomic across every process that shares the circuit
and costs one round trip. The scripts mirror :class:`connectivity.policies.breaker.Circuit` line for line (same
states, same :data:`~connectivity.policies.breaker.TRANSITIONS`, same trip conditions and reasons), except that:

* time is Redis server time (``TIME``), never a client clock;
* a new circuit starts at epoch *milliseconds of server time*, not 0, so a ticket admitted before the keys expired
  or before Redis restarted empty can never match the new circuit's epoch;
* a ratio is compared as ``failures / calls >= ratio`` (7 of 25 reaches 0.28; ``0.28 * 25`` is
  7.000000000000001 and would not);
* a probe permit is a lease: a process that dies holding one would otherwise leave the circuit half-open forever,
  so once every permit is taken and the newest is older than ``probe_lease``, the probes count as failed
  (``half-open -> open``, the same row a failed probe takes).

Keys (one Redis Cluster slot per circuit, thanks to the ``{...}`` hash tag in both names):

* ``KEYS[1]``, a hash: ``st`` state, ``ep`` epoch, ``ra`` when an open circuit admits probes (server seconds),
  ``op`` openings without closing, ``pr`` probes in flight, ``ps`` probe successes, ``pl`` probe lease end,
  ``cf`` consecutive failures, ``rj`` rejected calls, ``n``/``f``/``s`` count-window totals.
* ``KEYS[2]``, the window: for a time window a hash ``bk`` (current bucket index) and ``n<i>``/``f<i>``/``s<i>``
  (calls, failures, slow calls of bucket ``i``); for a count window a list of outcome codes, oldest first.

``ARGV[1..14]`` is the circuit's configuration (built in ``RedisCircuit.__init__``) plus a random number
for jitter; a script's own arguments follow. Replies are arrays of integers and strings (Lua numbers become
integers on the way out, so durations travel as integer microseconds; ``-1`` means "none").
"""

from __future__ import annotations

from connectivity.policies.breaker import BUCKETS, TRANSITIONS

__all__ = ["ADMIT", "ISOLATE", "RECORD", "RESET", "STATUS"]

_ALLOWED = ", ".join(f"['{a}>{b}'] = true" for a, b in sorted(TRANSITIONS))

_PRELUDE = f"""
local H, W = KEYS[1], KEYS[2]
local COUNT = ARGV[1] == 'count'
local WINDOW = tonumber(ARGV[2])
local MIN_CALLS = tonumber(ARGV[3])
local FAILURE_RATIO = tonumber(ARGV[4])
local CONSECUTIVE = tonumber(ARGV[5])
local SLOW_RATIO = tonumber(ARGV[6])
local PERMITS = tonumber(ARGV[7])
local SUCCESSES = tonumber(ARGV[8])
local OPEN_FOR = tonumber(ARGV[9])
local OPEN_FOR_MAX = tonumber(ARGV[10])
local JITTER = tonumber(ARGV[11])
local TTL = tonumber(ARGV[12])
local LEASE = tonumber(ARGV[13])
local RAND = tonumber(ARGV[14])
local BUCKETS = {BUCKETS}
local ALLOWED = {{{_ALLOWED}}}
local FIELDS = {{'st', 'ep', 'op', 'pr', 'ps', 'ra', 'pl', 'cf', 'n', 'f', 's'}}

local clock = redis.call('TIME')
local NOW = tonumber(clock[1]) + tonumber(clock[2]) / 1000000

local function us(seconds)
  return math.floor(seconds * 1000000 + 0.5)
end

local function load()
  local v = redis.call('HMGET', H, unpack(FIELDS))
  if not v[1] then
    return nil
  end
  local c = {{st = v[1]}}
  for i = 2, #FIELDS do
    c[FIELDS[i]] = tonumber(v[i]) or 0
  end
  return c
end

local function create()
  redis.call('DEL', W)
  return {{st = 'closed', ep = math.floor(NOW * 1000), op = 0, pr = 0, ps = 0, ra = 0, pl = 0, cf = 0,
          n = 0, f = 0, s = 0}}
end

local function save(c)
  local args = {{}}
  for i = 1, #FIELDS do
    args[#args + 1] = FIELDS[i]
    args[#args + 1] = c[FIELDS[i]]
  end
  redis.call('HSET', H, unpack(args))
  if c.st == 'isolated' then
    redis.call('PERSIST', H)
  else
    redis.call('PEXPIRE', H, TTL)
    redis.call('PEXPIRE', W, TTL)
  end
end

local function open_for(opened)
  local seconds = OPEN_FOR
  if OPEN_FOR_MAX >= 0 and opened > 1 then
    seconds = math.min(OPEN_FOR * 2 ^ (opened - 1), OPEN_FOR_MAX)
  end
  if JITTER > 0 then
    seconds = seconds * (1 + JITTER * (2 * RAND - 1))
  end
  return seconds
end

local function transition(c, to, reason)
  if not ALLOWED[c.st .. '>' .. to] then
    error('circuit: no transition ' .. c.st .. ' -> ' .. to .. ' (' .. reason .. ')')
  end
  c.from, c.reason = c.st, reason
  c.st, c.ep, c.pr, c.ps = to, c.ep + 1, 0, 0
  if to == 'open' then
    c.op = c.op + 1
    c.open_for = open_for(c.op)
    c.ra = NOW + c.open_for
  elseif to == 'closed' then
    c.op, c.cf, c.n, c.f, c.s = 0, 0, 0, 0, 0
    redis.call('DEL', W)
  end
end

-- The time window's buckets, read from W and rotated to now (slots older than the window are zeroed).
local function buckets()
  local index = math.floor(NOW / (WINDOW / BUCKETS))
  local raw = redis.call('HGETALL', W)
  local b = {{}}
  for i = 1, #raw, 2 do
    b[raw[i]] = tonumber(raw[i + 1])
  end
  local last = b.bk
  for j = 0, BUCKETS - 1 do
    local stale = last == nil or index - last >= BUCKETS or index < last
    if not stale and index ~= last then
      local age = (j - last) % BUCKETS
      stale = age >= 1 and age <= index - last
    end
    if stale then
      b['n' .. j], b['f' .. j], b['s' .. j] = 0, 0, 0
    else
      b['n' .. j], b['f' .. j], b['s' .. j] = b['n' .. j] or 0, b['f' .. j] or 0, b['s' .. j] or 0
    end
  end
  b.bk = index
  return b, index
end

local function totals(c)
  if COUNT then
    return c.n, c.f, c.s
  end
  local b = buckets()
  local calls, failures, slow = 0, 0, 0
  for j = 0, BUCKETS - 1 do
    calls = calls + b['n' .. j]
    failures = failures + b['f' .. j]
    slow = slow + b['s' .. j]
  end
  return calls, failures, slow
end

local function reply(c)
  if c.from == nil then
    return {{c.st, '', '', -1}}
  end
  return {{c.st, c.from, c.reason, c.open_for and us(c.open_for) or -1}}
end
"""

ADMIT = (
    _PRELUDE
    + """
-- -> {admitted 1/0, state, epoch, probe 1/0, retry_after_us, from, reason, open_for_us}
local c = load()
if c == nil then
  c = create()
  save(c)
  return {1, 'closed', c.ep, 0, -1, '', '', -1}
end
if c.st == 'closed' then
  return {1, 'closed', c.ep, 0, -1, '', '', -1}
end
if c.st == 'isolated' then
  redis.call('HINCRBY', H, 'rj', 1)
  return {0, 'isolated', -1, 0, -1, '', '', -1}
end
if c.st == 'open' then
  local left = c.ra - NOW
  if left > 0 then
    redis.call('HINCRBY', H, 'rj', 1)
    return {0, 'open', -1, 0, us(left), '', '', -1}
  end
  transition(c, 'half-open', 'open time elapsed')
end
local t = reply(c)
if c.pr < PERMITS then
  c.pr, c.pl = c.pr + 1, NOW + LEASE
  save(c)
  return {1, 'half-open', c.ep, 1, -1, t[2], t[3], -1}
end
if NOW >= c.pl then
  transition(c, 'open', 'probe(s) lost: no outcome within the probe lease')
  save(c)
  redis.call('HINCRBY', H, 'rj', 1)
  return {0, 'open', -1, 0, us(c.open_for), c.from, c.reason, us(c.open_for)}
end
redis.call('HINCRBY', H, 'rj', 1)
return {0, 'half-open', -1, 0, 0, '', '', -1}
"""
)

RECORD = (
    _PRELUDE
    + """
-- ARGV[15] epoch, ARGV[16] probe 1/0, ARGV[17] outcome -> {state, from, reason, open_for_us}
local epoch, probe, outcome = tonumber(ARGV[15]), tonumber(ARGV[16]), tonumber(ARGV[17])
local c = load()
if c == nil then
  return {'closed', '', '', -1}
end
if c.ep ~= epoch then
  return {c.st, '', '', -1}
end
if probe == 1 then
  if c.st ~= 'half-open' then
    return {c.st, '', '', -1}
  end
  c.pr = math.max(c.pr - 1, 0)
  if outcome == 0 then
    c.ps = c.ps + 1
    if c.ps >= SUCCESSES then
      transition(c, 'closed', string.format('%d probe(s) succeeded', c.ps))
    end
  elseif outcome == 1 then
    transition(c, 'open', 'probe failed')
  elseif outcome == 2 then
    transition(c, 'open', 'probe was slow')
  end
  save(c)
  return reply(c)
end
if c.st ~= 'closed' or outcome >= 3 then
  return {c.st, '', '', -1}
end
local failed, slow = outcome == 1, outcome == 2
local calls, failures, slows
if COUNT then
  local held = redis.call('LLEN', W)
  while held >= WINDOW do
    local evicted = tonumber(redis.call('LPOP', W))
    c.n = math.max(c.n - 1, 0)
    if evicted == 1 then c.f = math.max(c.f - 1, 0) end
    if evicted == 2 then c.s = math.max(c.s - 1, 0) end
    held = held - 1
  end
  redis.call('RPUSH', W, outcome)
  c.n = c.n + 1
  if failed then c.f = c.f + 1 end
  if slow then c.s = c.s + 1 end
  calls, failures, slows = c.n, c.f, c.s
else
  local b, index = buckets()
  local j = index % BUCKETS
  b['n' .. j] = b['n' .. j] + 1
  if failed then b['f' .. j] = b['f' .. j] + 1 end
  if slow then b['s' .. j] = b['s' .. j] + 1 end
  local args = {'bk', index}
  calls, failures, slows = 0, 0, 0
  for i = 0, BUCKETS - 1 do
    calls = calls + b['n' .. i]
    failures = failures + b['f' .. i]
    slows = slows + b['s' .. i]
    args[#args + 1] = 'n' .. i
    args[#args + 1] = b['n' .. i]
    args[#args + 1] = 'f' .. i
    args[#args + 1] = b['f' .. i]
    args[#args + 1] = 's' .. i
    args[#args + 1] = b['s' .. i]
  end
  redis.call('HSET', W, unpack(args))
end
if failed then
  c.cf = c.cf + 1
else
  c.cf = 0
end
if failed or slow then
  local reason = nil
  if CONSECUTIVE >= 0 and c.cf >= CONSECUTIVE then
    reason = string.format('%d consecutive failures', c.cf)
  elseif calls >= MIN_CALLS and FAILURE_RATIO >= 0 and failures / calls >= FAILURE_RATIO then
    reason = string.format('failure ratio %.2f >= %g over %d calls', failures / calls, FAILURE_RATIO, calls)
  elseif calls >= MIN_CALLS and SLOW_RATIO >= 0 and slows / calls >= SLOW_RATIO then
    reason = string.format('slow-call ratio %.2f >= %g over %d calls', slows / calls, SLOW_RATIO, calls)
  end
  if reason then
    transition(c, 'open', reason)
  end
end
save(c)
return reply(c)
"""
)

ISOLATE = (
    _PRELUDE
    + """
-- -> {state, from, reason, open_for_us}
local c = load() or create()
if c.st ~= 'isolated' then
  transition(c, 'isolated', 'isolated by hand')
end
save(c)
return reply(c)
"""
)

RESET = (
    _PRELUDE
    + """
-- -> {state, from, reason, open_for_us}
local c = load() or create()
if c.st ~= 'closed' then
  transition(c, 'closed', 'reset by hand')
else
  c.cf, c.n, c.f, c.s = 0, 0, 0, 0
  redis.call('DEL', W)
end
save(c)
return reply(c)
"""
)

STATUS = (
    _PRELUDE
    + """
-- Read-only. -> {state, calls, failures, slow, consecutive, probes, rejected, retry_after_us}
local c = load()
if c == nil then
  return {'closed', 0, 0, 0, 0, 0, 0, -1}
end
local calls, failures, slow = totals(c)
local retry = -1
if c.st == 'open' then
  retry = us(math.max(c.ra - NOW, 0))
end
return {c.st, calls, failures, slow, c.cf, c.pr, tonumber(redis.call('HGET', H, 'rj')) or 0, retry}
"""
)
