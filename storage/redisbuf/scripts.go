package redisbuf

import (
	"strconv"

	"github.com/redis/go-redis/v9"

	"github.com/keepwatch/keepwatch"
)

// encodedLenLua is keepwatch.EncodedLen as Lua source: every state starts
// with a head of this width, and most are that head alone, so the script
// slices them and looks for the end of a longer one only past the head.
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
// groups, then per group: n, then n × (video, encoded state). The user is the
// tail of the group's hash key ("kw:{kwNN}:u:<user>"), read only when an entry
// is new. Packing keeps the client from building (and the allocator from
// boxing) four arguments per event; '\n' cannot occur in any field (user ids
// have no control characters, video ids and states have a fixed alphabet).
// Returns the positions (from 1, in the call's order of groups) of the groups
// refused because they would add entries past their shard's limit (nothing of
// them is applied): usually none, so the reply is an empty array rather than
// one integer per group for Redis to build and the client to read. Every
// other group is applied, or was older than what is pending (or erased),
// which is the same outcome.
//
// Entries new to the buffer are indexed with one ZADD per sorted set and
// section, not two per entry: each call from a script costs Redis about as
// much as the command itself.
//
// Comparing encoded states as strings compares event time first and then the
// tie-break fields (keepwatch.State.Compare).
//
// The user's erase, when one is pending, is the user hash's field "" (video
// ids are never empty). A new entry (none pending for its video) at or before
// the erase's event time is dropped: the erase removed everything older when
// it was recorded, so an entry already pending is newer than the erase and an
// update of it needs no check, which keeps the check off the common update.
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
  local e = pos + W
  if byte(p, e) ~= 10 then e = find(p, '\n', e, true) end
  local s = sub(p, pos, e - 1)
  pos = e + 1
  return s
end
-- erased reports whether the user of hash hk erased everything up to a time
-- at or after the event time of val.
local function erased(hk, val)
  local er = call('HGET', hk, '')
  return er and sub(val, 1, 13) <= sub(er, 1, 13)
end
local refused = {}
local g = 0
local k = 0
local unpack, min = unpack, math.min
while pos <= #p do
  local groups = tonumber(field())
  local qk, ak = KEYS[k + 1], KEYS[k + 2]
  -- qk is "kw:{kwNN}:q"; user hash keys are "kw:{kwNN}:u:<user>".
  local ustart = #qk + 2
  local card = call('ZCARD', ak)
  -- fresh holds now, member, now, member, ... of the entries new to the
  -- buffer, indexed at the end of the section.
  local fresh, nf = {}, 0
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
      -- value(), inlined: the head alone is the common case, one byte
      -- check more than when every state had a fixed width.
      local ve = e + 1 + W
      if byte(p, ve) ~= 10 then ve = find(p, '\n', ve, true) end
      local val = sub(p, e + 1, ve - 1)
      pos = ve + 1
      local c = call('HGET', hk, v)
      if not c then
        if erased(hk, val) then
          -- dropped: the erase covers it
        elseif limit > 0 and card + 1 > limit then
          refused[#refused + 1] = g
        else
          call('HSET', hk, v, val)
          fresh[nf + 1] = now
          fresh[nf + 2] = sub(hk, ustart) .. '/' .. v
          nf = nf + 2
          card = card + 1
        end
      elseif val > c then
        call('HSET', hk, v, val)
      end
    else
      -- One HGET per distinct video: it tells both whether the entry is new
      -- (for the high-water mark) and what the new state must beat.
      local videos, vals, cur = {}, {}, {}
      local new = 0
      local er = nil
      for j = 1, n do
        local v = field()
        videos[j] = v
        vals[j] = value()
        if cur[v] == nil then
          local c = call('HGET', hk, v)
          if c then cur[v] = c else cur[v] = false; new = new + 1 end
        end
      end
      if new > 0 then er = call('HGET', hk, '') end
      if er then
        -- Entries new to the buffer that the erase covers are dropped; an
        -- entry of the group for the same video that is newer than the
        -- erase still counts as new.
        er = sub(er, 1, 13)
        new = 0
        local seen = {}
        for j = 1, n do
          local v = videos[j]
          if cur[v] == false then
            if sub(vals[j], 1, 13) <= er then
              vals[j] = false
            elseif not seen[v] then
              seen[v] = true
              new = new + 1
            end
          end
        end
      end
      if limit > 0 and new > 0 and card + new > limit then
        refused[#refused + 1] = g
      else
        for j = 1, n do
          local v, val = videos[j], vals[j]
          local c = cur[v]
          if not val then
            -- erased
          elseif c == false then
            fresh[nf + 1] = now
            fresh[nf + 2] = sub(hk, ustart) .. '/' .. v
            nf = nf + 2
            card = card + 1
            call('HSET', hk, v, val)
            cur[v] = val
          elseif val > c then
            call('HSET', hk, v, val)
            cur[v] = val
          end
        end
      end
    end
  end
  -- Lua's stack bounds how many values unpack may pass: 1000 entries a call.
  for s = 1, nf, 2000 do
    local e = min(nf, s + 1999)
    call('ZADD', qk, 'NX', unpack(fresh, s, e))
    call('ZADD', ak, 'NX', unpack(fresh, s, e))
  end
  k = k + 2 + groups
end
return refused
`)

// eraseScript records a user's erase: it drops the user's pending entries at
// or before the erase's event time and keeps the erase as the pending entry
// of the user hash's field "" (newest erase winning), indexed like any entry
// so that a flusher applies it to MongoDB and the dead letters. Until then the
// apply script drops new entries the erase covers (see applyScript).
//
// KEYS[1] = q, KEYS[2] = a, KEYS[3] = c, KEYS[4] = n, KEYS[5] = the user hash.
// ARGV[1] = now (ms), ARGV[2] = the erase's event time as the 13 digits of an
// encoded state, ARGV[3] = the erase's encoded state, ARGV[4] = the user.
// An entry under a flusher's claim keeps its index (the claim's release
// removes it, finding no value): taking it away would make the flusher think
// its whole batch lost. Returns how many pending entries it dropped.
var eraseScript = redis.NewScript(`
local q, a, c, n, hk = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now, upto, enc, user = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local call, sub = redis.call, string.sub
local all = call('HGETALL', hk)
local dropped = 0
for i = 1, #all, 2 do
  local f, v = all[i], all[i + 1]
  if f ~= '' and sub(v, 1, 13) <= upto then
    call('HDEL', hk, f)
    local m = user .. '/' .. f
    if not call('HGET', c, m) then
      call('ZREM', q, m)
      call('ZREM', a, m)
      call('HDEL', n, m)
    end
    dropped = dropped + 1
  end
end
local cur = call('HGET', hk, '')
if not cur or enc > cur then call('HSET', hk, '', enc) end
local m = user .. '/'
call('ZADD', q, 'NX', now, m)
call('ZADD', a, 'NX', now, m)
return dropped
`)

// eraseDoneScript removes a user's pending erase once it is applied
// elsewhere (keepwatch erase applies it to MongoDB itself), if it is still
// the one given: a newer erase stays. An erase under a flusher's claim keeps
// its index for the claim's release.
//
// KEYS as eraseScript. ARGV[1] = the erase's encoded state, ARGV[2] = the
// user. Returns 1 when it removed the erase.
var eraseDoneScript = redis.NewScript(`
local q, a, c, n, hk = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
if redis.call('HGET', hk, '') ~= ARGV[1] then return 0 end
redis.call('HDEL', hk, '')
local m = ARGV[2] .. '/'
if not redis.call('HGET', c, m) then
  redis.call('ZREM', q, m)
  redis.call('ZREM', a, m)
  redis.call('HDEL', n, m)
end
return 1
`)

// claimScript hides up to ARGV[3] due members of the shard for a lease and
// marks them with the claim's token.
//
// KEYS[1] = q, KEYS[2] = c (member → claim token), KEYS[3] = n (member →
// "count:ms", failed attempts and when the first began). ARGV[1] = now (ms),
// ARGV[2] = lease deadline (ms), ARGV[3] = max, ARGV[4] = the claim's token,
// ARGV[5] = the lowest due time claimed ("-inf": every due member).
// Returns first the soonest lease deadline of the other claims of the shard
// ("" when none): scores in the future are lease deadlines, since entries are
// due from the moment they are written. Then, per claimed member, three
// values: the member, its failed attempts before this claim, and when the
// first of them began (ms; now when none).
//
// A member stays claimed (invisible) until its deadline; a flusher that dies
// simply lets the deadline pass. The claim is counted as a failed attempt
// right away, because a flusher that dies cannot count it: Release takes the
// count back when the write succeeds or was never tried.
var claimScript = redis.NewScript(`
local q, c, n = KEYS[1], KEYS[2], KEYS[3]
local now, deadline, token = ARGV[1], ARGV[2], ARGV[4]
local out = {''}
local soonest = redis.call('ZRANGEBYSCORE', q, '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
if soonest[2] then out[1] = soonest[2] end
local ms = redis.call('ZRANGEBYSCORE', q, ARGV[5], now, 'LIMIT', 0, tonumber(ARGV[3]))
for _, m in ipairs(ms) do
  redis.call('ZADD', q, 'XX', deadline, m)
  redis.call('HSET', c, m, token)
  local count, since = 0, now
  local v = redis.call('HGET', n, m)
  if v then
    local p = string.find(v, ':', 1, true)
    count = tonumber(string.sub(v, 1, p - 1))
    since = string.sub(v, p + 1)
  end
  redis.call('HSET', n, m, (count + 1) .. ':' .. since)
  out[#out + 1] = m
  out[#out + 1] = count
  out[#out + 1] = since
end
return out
`)

// renewScript pushes the lease of the members still under one claim.
//
// KEYS[1] = q, KEYS[2] = c. ARGV[1] = the new lease deadline (ms), ARGV[2] =
// the claim's token, ARGV[3…] = the claim's members. A member is still under
// the claim while c holds the claim's token for it: a claim made after this
// one's lease expired took the member over, and a release removed it.
// Returns how many members it renewed.
var renewScript = redis.NewScript(`
local q, c, token = KEYS[1], KEYS[2], ARGV[2]
local renewed = 0
for i = 3, #ARGV do
  local m = ARGV[i]
  if redis.call('HGET', c, m) == token and redis.call('ZSCORE', q, m) then
    redis.call('ZADD', q, 'XX', ARGV[1], m)
    renewed = renewed + 1
  end
end
return renewed
`)

// releaseScript ends a claim.
//
// KEYS[1] = q, KEYS[2] = a, KEYS[3] = c, KEYS[4] = n, KEYS[4+i] = user hash of
// item i. ARGV[1] = now (ms), ARGV[2] = the claim's token, ARGV[3] = the
// change of the failure count of the items not done (failed attempts minus
// the one counted at claim time: -1 takes that one back), then per item:
// video, member, claimed value ("" when the claim found none), done (1/0).
//
// A done item is removed only if the pending value is still the claimed one,
// and its failure count is cleared either way: a newer value written
// meanwhile stays pending, with its age starting now. Every other item still
// pending and still under this claim becomes visible again at once; an item
// claimed again by another flusher after this lease expired is left to that
// flusher. Removing an entry removes every trace of it (index, claim, count),
// so nothing outlives the entries.
// Returns the number of entries removed.
var releaseScript = redis.NewScript(`
local q, a, c, n = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, token, delta = ARGV[1], ARGV[2], tonumber(ARGV[3])
local removed = 0
local item = 0
for i = 4, #ARGV, 4 do
  item = item + 1
  local hk = KEYS[4 + item]
  local video, m, val, done = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local cur = redis.call('HGET', hk, video)
  if not cur or (done == '1' and cur == val) then
    if cur then
      redis.call('HDEL', hk, video)
      removed = removed + 1
    end
    redis.call('ZREM', q, m)
    redis.call('ZREM', a, m)
    redis.call('HDEL', c, m)
    redis.call('HDEL', n, m)
  else
    if done == '1' then
      -- a newer value arrived while the old one was being written: its age
      -- starts now, not when the old value first became pending, and it has
      -- not failed yet
      redis.call('ZADD', a, 'XX', now, m)
      redis.call('HDEL', n, m)
    elseif delta ~= 0 then
      local v = redis.call('HGET', n, m)
      if v then
        local p = string.find(v, ':', 1, true)
        local count = tonumber(string.sub(v, 1, p - 1)) + delta
        if count > 0 then
          redis.call('HSET', n, m, count .. string.sub(v, p))
        else
          redis.call('HDEL', n, m)
        end
      end
    end
    if redis.call('HGET', c, m) == token then
      redis.call('HDEL', c, m)
      redis.call('ZADD', q, 'XX', now, m)
    elseif not redis.call('ZSCORE', q, m) then
      -- pending but not indexed (written by a build that left it so): index it
      redis.call('ZADD', q, now, m)
      redis.call('ZADD', a, 'NX', now, m)
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

// collationScript compares pairs of strings whose byte order is known and
// returns the index of the first pair Lua orders otherwise (0: none). Lua
// compares strings with the C library's strcoll, so a redis-server started
// under a locale such as en_US.UTF-8 orders them by that locale's collation,
// which ignores punctuation at first: "-0000001.000" (a position not sent)
// then sorts above "00000000.000", and ties between states would be broken
// unlike MongoDB's $max. The pairs hold the characters encoded states use.
var collationScript = redis.NewScript(`
local pairs = {
  {'-0000001.000', '00000000.000'},
  {'0.9', '0|1'},
  {'1|0|A', '1|0|a'},
  {'ab-c', 'ab.c'},
  {'x:1', 'x_0'},
}
for i, p in ipairs(pairs) do
  if not (p[1] < p[2]) then return i end
end
return 0
`)
