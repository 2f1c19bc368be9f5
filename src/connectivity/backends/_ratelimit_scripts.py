"""The Lua half of :mod:`connectivity.backends.redis_ratelimit`: GCRA for every limit of a key, inside Redis.

Theory of operation: one script per decision, so a decision is atomic across every process that shares the key
and costs one round trip. It is :meth:`connectivity.policies.ratelimit.RateLimiter._decide` line for line (same
inequality, same refusal and ``remaining`` rules, all limits consumed together or not at all), except that:

* time is Redis server time (``TIME``) in seconds since :data:`EPOCH` (a recent origin keeps the resolution of a
  double at about 10 ns for decades), never a client clock;
* the tolerance comparison allows ``min(EPS, T / 1000)`` (:data:`EPS` is 1 µs), not 1 ns: the stored numbers are
  larger;
* replies are integers (Lua numbers become integers on the way out), so durations travel as integer microseconds,
  rounded up: a client that waits ``retry_after`` is allowed; ``-1`` is "never" (``math.inf``: a single request
  of more than a whole burst, as the local limiter answers it; a peek gets the finite time instead).

Keys: ``KEYS[1]`` is one hash per limiter key (``<prefix>{<name>/<key>}``: one Redis Cluster slot), one field per
limit (``<rate>/<per>b<burst>``, so a changed limit starts afresh) holding its theoretical arrival time, and
``hold`` (:data:`HOLD`), the end of a hold-off, kept apart from the arrival times as the local limiter keeps it:
while it lasts every request is refused (``retry_after`` = what is left of it, ``index`` 1), and then the limits
are where they were. The hash expires (``PEXPIRE``) when every limit would be back to a full burst and no hold-off
is left: after the largest tolerance, or later when a hold-off or a pushed-back batch runs further ahead.

``ARGV``: ``mode`` (``a`` acquire, ``p`` peek, ``h`` hold off, ``s`` sync), ``cost``, ``pending`` (batched mode:
cost a process already admitted on its own, consumed unconditionally first), ``hold`` (seconds, mode ``h``),
``n`` (number of limits), then ``field, interval, tolerance`` for each limit.

Reply: ``{allowed, index, retry_after_us, remaining, reset_after_us, hold_us, lead_us_1, ..., lead_us_n}`` where
``index`` (1-based) is the limit that refused or else the tightest one, ``hold_us`` what is left of a hold-off, and
``lead_us_i`` how far limit ``i``'s arrival time runs ahead of now after the script (what a batched-mode process
copies into its local view).
"""

from __future__ import annotations

from typing import Final

__all__ = ["DECIDE", "EPOCH", "EPS", "HOLD"]

EPOCH: Final = 1_700_000_000
"""Origin of the server times the script stores (POSIX seconds): keeps the numbers small and precise."""

HOLD: Final = "hold"
"""The hash field of a hold-off (server time until which nothing passes); limit fields contain a ``/``."""

EPS: Final = 1e-6
"""Seconds by which a request may exceed a tolerance and still pass (float rounding, never policy; at most a
thousandth of the limit's interval)."""

DECIDE: Final = f"""
local key = KEYS[1]
local mode = ARGV[1]
local cost = tonumber(ARGV[2])
local pending = tonumber(ARGV[3])
local hold = tonumber(ARGV[4])
local n = tonumber(ARGV[5])
local EPS = {EPS!r}
local HOLD = '{HOLD}'

local clock = redis.call('TIME')
local now = (tonumber(clock[1]) - {EPOCH}) + tonumber(clock[2]) / 1000000

local fields, interval, tolerance = {{}}, {{}}, {{}}
local longest = 0
for i = 1, n do
  local at = 5 + (i - 1) * 3
  fields[i] = ARGV[at + 1]
  interval[i] = tonumber(ARGV[at + 2])
  tolerance[i] = tonumber(ARGV[at + 3])
  if tolerance[i] > longest then
    longest = tolerance[i]
  end
end

-- A limit whose arrival time has passed is idle: the same as one never used.
fields[n + 1] = HOLD
local stored = redis.call('HMGET', key, unpack(fields))
fields[n + 1] = nil
local tat = {{}}
for i = 1, n do
  local value = tonumber(stored[i])
  if value == nil or value < now then
    value = now
  end
  tat[i] = value
end
local held = tonumber(stored[n + 1]) or 0
local holding = false

local dirty = false
if pending > 0 then
  -- Batched mode: requests a process already let through on its own count, whatever they cost now.
  for i = 1, n do
    tat[i] = tat[i] + pending * interval[i]
  end
  dirty = true
end

local allowed, index, retry, remaining, reset = 1, 0, 0, 0, 0
if mode == 'h' then
  -- A hold-off is kept apart from the arrival times: once over, the limits are where they were.
  if now + hold > held then
    held = now + hold
  end
  holding = true
  dirty = true
elseif (mode == 'a' or mode == 'p') and held > now then
  allowed, index, retry, reset = 0, 1, held - now, held - now
elseif mode == 'a' or mode == 'p' then
  local refused, tightest = false, false
  local new = {{}}
  for i = 1, n do
    local ahead = tat[i] + cost * interval[i] - now
    local slack = math.min(EPS, interval[i] / 1000)
    if ahead > tolerance[i] + slack then
      local wait = ahead - tolerance[i]
      if mode == 'a' and cost * interval[i] > tolerance[i] + slack then
        wait = math.huge  -- more than a whole burst at once: never (a peek asks when, one at a time)
      end
      if not refused or wait > retry then
        index, retry, reset = i, wait, tat[i] - now
      end
      refused = true
      new[i] = tat[i]
    else
      local left = math.floor((tolerance[i] + slack - ahead) / interval[i])
      if not refused and (not tightest or left < remaining) then
        index, remaining, reset = i, left, ahead
        tightest = true
      end
      new[i] = tat[i] + cost * interval[i]
    end
  end
  if refused then
    allowed, remaining = 0, 0
  elseif mode == 'a' then
    tat = new
    dirty = true
  end
end

local hold_lead = math.max(held - now, 0)
local retry_us = -1
if retry < math.huge then
  retry_us = math.ceil(retry * 1000000)
end
local reply = {{allowed, index, retry_us, remaining, math.ceil(reset * 1000000), math.ceil(hold_lead * 1000000)}}
local furthest = math.max(longest, hold_lead)
for i = 1, n do
  local lead = tat[i] - now
  if lead > furthest then
    furthest = lead
  end
  reply[6 + i] = math.ceil(lead * 1000000)
end

if dirty then
  local values = {{}}
  for i = 1, n do
    values[#values + 1] = fields[i]
    values[#values + 1] = string.format('%.17g', tat[i])
  end
  if holding then
    values[#values + 1] = HOLD
    values[#values + 1] = string.format('%.17g', held)
  end
  redis.call('HSET', key, unpack(values))
  redis.call('PEXPIRE', key, math.ceil(furthest * 1000) + 1)
end
return reply
"""
"""One decision (see the module docstring for the keys, arguments and reply)."""
