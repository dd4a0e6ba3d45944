package redisbuf

import (
	"strconv"

	"github.com/redis/go-redis/v9"

	"github.com/keepwatch/keepwatch"
)

// encodedLenLua is keepwatch.EncodedLen as Lua source: states have a fixed
// width, so the script slices them instead of searching for a separator.
var encodedLenLua = strconv.Itoa(keepwatch.EncodedLen)

// On a Redis Cluster every script call touches only keys of one shard: they
// all carry the shard's hash tag, so the call lives in one cluster slot. Keys
// are always passed in KEYS (never built inside a script) so Redis Cluster can
// route and check them.

// applyScript applies groups of entries, each group one request's events for
// one user, all-or-nothing per group.
//
// The call carries one or more shard sections. On a Redis Cluster every call
// has one section (one slot); on a single Redis one call carries every shard
// the group commit touched, because each script call costs Redis about as
// much as six events do, and Redis' CPU is what bounds the command side.
//
// KEYS, per section: q (visibility zset), a (age zset), then the user hash of
// each of its groups. ARGV[1] = now (ms), ARGV[2] = per-shard limit of pending
// entries (0 = none), ARGV[3] = the sections packed as lines: the number of
// groups, then per group: n, then n × (video, encoded state of
// keepwatch.EncodedLen bytes). The user is the tail of the group's hash key
// ("kw:{kwNN}:u:<user>"), read only when an entry is new. Packing keeps the
// client from building (and the allocator from boxing) four arguments per
// event; '\n' cannot occur in any field (user ids have no control
// characters, video ids and states have a fixed alphabet).
// Returns one integer per group, in order: the number of entries that changed
// the buffer (0 when every entry was older than what is pending), or -1 when
// the group would add entries past its shard's limit (nothing of it is
// applied).
//
// Encoded states have a fixed width, so comparing them as strings compares
// event time first and then the tie-break fields (keepwatch.State.Compare).
var applyScript = redis.NewScript(`
local now = ARGV[1]
local limit = tonumber(ARGV[2])
local p = ARGV[3]
local find, sub, byte, call = string.find, string.sub, string.byte, redis.call
local W = ` + encodedLenLua + `
local pos = 1
local function field()
  local e = find(p, '\n', pos, true)
  local s = sub(p, pos, e - 1)
  pos = e + 1
  return s
end
local function value()
  local s = sub(p, pos, pos + W - 1)
  pos = pos + W + 1
  return s
end
local out = {}
local g = 0
local k = 0
while pos <= #p do
  local groups = tonumber(field())
  local qk, ak = KEYS[k + 1], KEYS[k + 2]
  -- qk is "kw:{kwNN}:q"; user hash keys are "kw:{kwNN}:u:<user>".
  local ustart = #qk + 2
  local card = call('ZCARD', ak)
  for i = 1, groups do
    g = g + 1
    local hk = KEYS[k + 2 + i]
    local n = 1
    if byte(p, pos + 1) == 10 and byte(p, pos) == 49 then
      pos = pos + 2 -- "1\n": read without making a string
    else
      n = tonumber(field())
    end
    if n == 1 then
      -- The common case, a player's single post: no tables.
      local e = find(p, '\n', pos, true)
      local v = sub(p, pos, e - 1)
      local val = sub(p, e + 1, e + W)
      pos = e + W + 2
      local c = call('HGET', hk, v)
      if not c then
        if limit > 0 and card + 1 > limit then
          out[g] = -1
        else
          call('HSET', hk, v, val)
          local m = sub(hk, ustart) .. '/' .. v
          call('ZADD', qk, 'NX', now, m)
          call('ZADD', ak, 'NX', now, m)
          card = card + 1
          out[g] = 1
        end
      elseif val > c then
        call('HSET', hk, v, val)
        out[g] = 1
      else
        out[g] = 0
      end
    else
      -- One HGET per distinct video: it tells both whether the entry is new
      -- (for the high-water mark) and what the new state must beat.
      local videos, vals, cur = {}, {}, {}
      local fresh = 0
      for j = 1, n do
        local v = field()
        videos[j] = v
        vals[j] = value()
        if cur[v] == nil then
          local c = call('HGET', hk, v)
          if c then cur[v] = c else cur[v] = false; fresh = fresh + 1 end
        end
      end
      if limit > 0 and fresh > 0 and card + fresh > limit then
        out[g] = -1
      else
        local changed = 0
        for j = 1, n do
          local v, val = videos[j], vals[j]
          local c = cur[v]
          if c == false then
            local m = sub(hk, ustart) .. '/' .. v
            call('ZADD', qk, 'NX', now, m)
            call('ZADD', ak, 'NX', now, m)
            card = card + 1
          end
          if c == false or val > c then
            call('HSET', hk, v, val)
            cur[v] = val
            changed = changed + 1
          end
        end
        out[g] = changed
      end
    end
  end
  k = k + 2 + groups
end
return out
`)

// claimScript hides up to ARGV[3] due members of the shard for a lease.
//
// KEYS[1] = q. ARGV[1] = now (ms), ARGV[2] = lease deadline (ms), ARGV[3] = max.
// Returns the claimed members. A member stays claimed (invisible) until its
// deadline; a flusher that dies simply lets the deadline pass.
var claimScript = redis.NewScript(`
local ms = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, m in ipairs(ms) do
  redis.call('ZADD', KEYS[1], 'XX', ARGV[2], m)
end
return ms
`)

// releaseScript ends a claim.
//
// KEYS[1] = q, KEYS[2] = a, KEYS[2+i] = user hash of item i.
// ARGV[1] = now (ms), ARGV[2] = the claim's lease deadline, then per item:
// video, member, claimed value ("" when the claim found none), done (1/0).
// A done item is removed only if the pending value is still the claimed one: a
// newer value written meanwhile stays pending. Every item still pending and
// still under this claim becomes visible again at once; an item re-claimed by
// another flusher after this lease expired is left to that flusher.
// Returns the number of entries removed.
var releaseScript = redis.NewScript(`
local now = ARGV[1]
local lease = tonumber(ARGV[2])
local removed = 0
local item = 0
for i = 3, #ARGV, 4 do
  item = item + 1
  local hk = KEYS[2 + item]
  local video, m, val, done = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local cur = redis.call('HGET', hk, video)
  if not cur then
    -- nothing pending: drop index entries a crash may have left behind
    redis.call('ZREM', KEYS[1], m)
    redis.call('ZREM', KEYS[2], m)
  elseif done == '1' and cur == val then
    redis.call('HDEL', hk, video)
    redis.call('ZREM', KEYS[1], m)
    redis.call('ZREM', KEYS[2], m)
    removed = removed + 1
  else
    local score = tonumber(redis.call('ZSCORE', KEYS[1], m))
    if score == nil then
      redis.call('ZADD', KEYS[1], now, m)
      redis.call('ZADD', KEYS[2], 'NX', now, m)
    elseif score == lease then
      redis.call('ZADD', KEYS[1], 'XX', now, m)
    end
    if done == '1' then
      -- a newer value arrived while the old one was being written: its age
      -- starts now, not when the old value first became pending
      redis.call('ZADD', KEYS[2], 'XX', now, m)
    end
  end
end
return removed
`)

// recordShardsScript records the shard count ARGV[1] under KEYS[1] when none
// is recorded or the recorded one is ARGV[2] (the caller found the buffer
// empty under it). Returns 0 when ARGV[1] is now recorded, else the recorded
// count.
var recordShardsScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then return 0 end
if not cur or cur == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[1])
  return 0
end
return tonumber(cur)
`)
