// Package redisbuf is the Redis buffer between the command API and MongoDB.
//
// It keeps at most one pending entry per (user, video): the newest state by
// keepwatch.State order, so repeated posts coalesce and MongoDB sees one write
// per key per flush. Keys are sharded by user, and every key of a shard carries
// the shard's hash tag, so each script touches one cluster slot and the same
// code runs on a single Redis and on a Redis Cluster.
//
// Per shard NN (hash tag {kwNN}):
//
//	kw:{kwNN}:u:<user>  HASH  video → encoded state   the user's pending entries
//	                          "" → encoded erase       the user's pending erase, if any
//	kw:{kwNN}:q         ZSET  "<user>/<video>" → ms   when the entry may be claimed
//	kw:{kwNN}:a         ZSET  "<user>/<video>" → ms   since when it is pending
//	kw:{kwNN}:c         HASH  "<user>/<video>" → token          the claim holding it
//	kw:{kwNN}:n         HASH  "<user>/<video>" → "count:ms"     failed attempts, since
//
// A flusher claims due members by pushing their q score to a lease deadline
// and marking them with its claim's token, renews the lease while it writes
// them, then releases exactly the values it wrote. A flusher that dies leaves
// its lease to expire and the members become due again; the attempt it made
// stays counted in n, so a batch that keeps killing its flushers still ends in
// a dead letter.
package redisbuf

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keepwatch/keepwatch"
)

// Options configure a Buffer.
type Options struct {
	// Shards is the number of key groups. It must stay the same for the life of
	// a deployment's data: entries written under another count are not found.
	Shards int
	// HighWater is the most pending entries the buffer holds (0: unlimited). It
	// is enforced per shard as HighWater/Shards, so a write is refused by one
	// script without a global counter; updates of a pending entry are always
	// accepted because they do not grow the buffer.
	HighWater int64
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Buffer is the Redis buffer. It is safe for concurrent use.
type Buffer struct {
	c          redis.UniversalClient
	shards     int
	shardLimit int64
	highWater  int64
	now        func() time.Time
	tags       []string // "kw:{kwNN}:" per shard
	queueKeys  []string
	ageKeys    []string
	claimKeys  []string
	failKeys   []string
	cluster    bool      // c may spread shards over servers: one script call per shard
	scratch    sync.Pool // *applyScratch
}

// DefaultShards is the shard count when Options.Shards is 0. On a single
// Redis a group commit is one script call whatever the count; on a Redis
// Cluster each shard a commit touches costs a call, and several shards per
// master spread the keys over the masters.
const DefaultShards = 4

const maxShards = 1024

// New returns a buffer on c.
func New(c redis.UniversalClient, o Options) (*Buffer, error) {
	if o.Shards == 0 {
		o.Shards = DefaultShards
	}
	if o.Shards < 1 || o.Shards > maxShards {
		return nil, fmt.Errorf("redis buffer: shards must be 1–%d, got %d", maxShards, o.Shards)
	}
	if o.HighWater < 0 {
		return nil, fmt.Errorf("redis buffer: high-water mark must not be negative, got %d", o.HighWater)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	b := &Buffer{c: c, shards: o.Shards, highWater: o.HighWater, now: o.Now}
	if o.HighWater > 0 {
		b.shardLimit = max(1, (o.HighWater+int64(o.Shards)-1)/int64(o.Shards))
	}
	for i := range o.Shards {
		tag := shardTag(i)
		b.tags = append(b.tags, tag)
		b.queueKeys = append(b.queueKeys, tag+"q")
		b.ageKeys = append(b.ageKeys, ageKeyOf(i))
		b.claimKeys = append(b.claimKeys, tag+"c")
		b.failKeys = append(b.failKeys, tag+"n")
	}
	// A *redis.Client talks to one server (or a failover set), where a
	// script may touch every shard; any other client may spread keys over
	// servers and gets one call per shard.
	_, single := c.(*redis.Client)
	b.cluster = !single
	b.scratch.New = func() any { return &applyScratch{sections: make([]shardSection, o.Shards)} }
	return b, nil
}

// shardTag is the key prefix of shard i, with its hash tag.
func shardTag(i int) string { return fmt.Sprintf("kw:{kw%02d}:", i) }

// ageKeyOf is shard i's age zset under any shard count; a Buffer keeps its
// own shards' keys in ageKeys.
func ageKeyOf(i int) string { return shardTag(i) + "a" }

// shardsKey records the shard count the buffered entries were written with.
const shardsKey = "kw:shards"

// CheckShards makes sure the entries in Redis were written with this
// buffer's shard count, recording it on first use. A user's entries live in
// the shard their id hashes to modulo the count, so under another count they
// would never be flushed or read. A new count is taken only while the buffer
// is empty, as after a drain; otherwise CheckShards returns an error naming
// both counts and changes nothing.
//
// It is a start-up check: processes that started while the buffer was empty
// are not re-checked on each write, so a count is changed with every writer
// stopped.
func (b *Buffer) CheckShards(ctx context.Context) error {
	want := strconv.Itoa(b.shards)
	switch err := b.c.Get(ctx, shardsKey).Err(); {
	case errors.Is(err, redis.Nil):
		// Nothing recorded: a new buffer, or one written by a build that did
		// not record its count. Check that what is there fits this count.
		if err := b.checkLayout(ctx); err != nil {
			return err
		}
	case err != nil:
		return unavailable("check the buffer's shard count", err)
	}
	prev, err := recordShardsScript.Run(ctx, b.c, []string{shardsKey}, want, "").Int()
	if err != nil {
		return unavailable("check the buffer's shard count", err)
	}
	if prev == 0 {
		return nil
	}
	if prev < 0 || prev > maxShards {
		return fmt.Errorf("%s holds %d, not a shard count (1–%d)", shardsKey, prev, maxShards)
	}
	// Recorded under another count: count what is pending under it.
	ageKeys := make([]string, prev)
	for i := range ageKeys {
		ageKeys[i] = ageKeyOf(i)
	}
	st, err := b.stats(ctx, ageKeys)
	if err != nil {
		return err
	}
	if pending := st.Pending; pending > 0 {
		return fmt.Errorf("redis holds %d entries buffered with --redis-shards %d, and this process has %d: "+
			"under another count they would never be flushed or read. Use --redis-shards %d, "+
			"or stop every writer and let `keepwatch flush --redis-shards %d` drain the buffer before changing it",
			pending, prev, b.shards, prev, prev)
	}
	// Empty: take the new count, unless another process changed it meanwhile.
	again, err := recordShardsScript.Run(ctx, b.c, []string{shardsKey}, want, strconv.Itoa(prev)).Int()
	if err != nil {
		return unavailable("record the buffer's shard count", err)
	}
	if again != 0 {
		return fmt.Errorf("the buffer's shard count changed to %d while this process checked it; --redis-shards is %d", again, b.shards)
	}
	return nil
}

// layoutSample is how many pending entries per shard checkLayout reads.
const layoutSample = 16

// checkLayout looks for entries written under another shard count where none
// is recorded: any entry in a shard past this count, or a sampled entry whose
// user hashes to another shard under this count.
func (b *Buffer) checkLayout(ctx context.Context) error {
	pipe := b.c.Pipeline()
	samples := make([]*redis.StringSliceCmd, b.shards)
	for s := range b.shards {
		samples[s] = pipe.ZRange(ctx, b.ageKey(s), 0, layoutSample-1)
	}
	beyond := make([]*redis.IntCmd, maxShards-b.shards)
	for i := range beyond {
		beyond[i] = pipe.Exists(ctx, ageKeyOf(b.shards+i))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return unavailable("check the buffer's layout", err)
	}
	for i, c := range beyond {
		if c.Val() > 0 {
			return fmt.Errorf("redis holds entries in shard %d, beyond --redis-shards %d: they were buffered with a larger count. "+
				"Use that count (at least %d), or let a flusher with it drain the buffer first", b.shards+i, b.shards, b.shards+i+1)
		}
	}
	for s, c := range samples {
		for _, m := range c.Val() {
			user := m[:max(0, strings.LastIndexByte(m, '/'))] // video ids have no '/'
			if got := b.ShardOf(user); got != s {
				return fmt.Errorf("redis holds entries buffered with another --redis-shards than %d (user %q is in shard %d, and belongs in %d): "+
					"use the count they were written with, or let a flusher with it drain the buffer first", b.shards, user, s, got)
			}
		}
	}
	return nil
}

// MatchesShards is CheckShards for a reader, which may be on a read-only
// replica: it writes nothing, and refuses any recorded count other than its
// own, since it would look for every user's entries in the wrong shard.
func (b *Buffer) MatchesShards(ctx context.Context) error {
	rec, err := b.c.Get(ctx, shardsKey).Result()
	if errors.Is(err, redis.Nil) {
		return nil
	}
	if err != nil {
		return unavailable("read the buffer's shard count", err)
	}
	if rec != strconv.Itoa(b.shards) {
		return fmt.Errorf("redis' buffer is written with --redis-shards %s, and this process has %d: "+
			"it would look for pending entries in the wrong shards. Use --redis-shards %s", rec, b.shards, rec)
	}
	return nil
}

// Shards returns the number of shards.
func (b *Buffer) Shards() int { return b.shards }

// HighWater returns the configured high-water mark (0: unlimited).
func (b *Buffer) HighWater() int64 { return b.highWater }

// ShardOf returns the shard of a user.
func (b *Buffer) ShardOf(userID string) int {
	// FNV-1a, inline: hash/fnv would allocate for the []byte conversion.
	h := uint32(2166136261)
	for i := 0; i < len(userID); i++ {
		h ^= uint32(userID[i])
		h *= 16777619
	}
	return int(h % uint32(b.shards))
}

func (b *Buffer) userKey(shard int, userID string) string { return b.tags[shard] + "u:" + userID }
func (b *Buffer) queueKey(shard int) string               { return b.queueKeys[shard] }
func (b *Buffer) ageKey(shard int) string                 { return b.ageKeys[shard] }

// Write is one request's events for one user. It is applied all-or-nothing.
type Write = keepwatch.Write

// Entry is one video's new state.
type Entry = keepwatch.Entry

// Apply stores writes, each all-or-nothing, in one round trip: one script
// call on a single Redis, one per shard involved (pipelined together) on a
// Redis Cluster. perWrite[i] is nil when writes[i] is stored
// (or was older than what is pending, which is the same outcome: the newest
// state is kept) and keepwatch.ErrBufferFull when it would have grown the
// buffer past its high-water mark. err is non-nil, wrapping
// keepwatch.ErrUnavailable, when Redis could not be reached or did not answer;
// then the outcome of each write is unknown, and a retry is safe because
// applying a state twice keeps the same newest state.
func (b *Buffer) Apply(ctx context.Context, writes []Write) (perWrite []error, err error) {
	perWrite = make([]error, len(writes))
	sc := b.scratch.Get().(*applyScratch)
	defer b.scratch.Put(sc)
	sc.reset()
	for i, w := range writes {
		if len(w.Entries) == 0 {
			continue
		}
		s := b.ShardOf(w.UserID)
		sec := &sc.sections[s]
		if len(sec.writes) == 0 {
			sc.touched = append(sc.touched, s)
		}
		sec.users = append(sec.users, b.userKey(s, w.UserID))
		sec.packed = strconv.AppendInt(sec.packed, int64(len(w.Entries)), 10)
		sec.packed = append(sec.packed, '\n')
		for _, e := range w.Entries {
			sec.packed = append(sec.packed, e.VideoID...)
			sec.packed = append(sec.packed, '\n')
			sec.packed = e.State.AppendEncode(sec.packed)
			sec.packed = append(sec.packed, '\n')
		}
		sec.writes = append(sec.writes, i)
	}
	if len(sc.touched) == 0 {
		return perWrite, nil
	}
	// Calls are formed from sections: all of them in one call on a single
	// Redis, one each on a cluster.
	now := strconv.FormatInt(b.now().UnixMilli(), 10)
	var call *scriptCall
	for n, s := range sc.touched {
		if n == 0 || b.cluster {
			sc.calls = append(sc.calls, scriptCall{})
			call = &sc.calls[len(sc.calls)-1]
		}
		sec := &sc.sections[s]
		sc.keys = append(sc.keys, b.queueKey(s), b.ageKey(s))
		sc.keys = append(sc.keys, sec.users...)
		sc.packed = strconv.AppendInt(sc.packed, int64(len(sec.writes)), 10)
		sc.packed = append(sc.packed, '\n')
		sc.packed = append(sc.packed, sec.packed...)
		sc.writes = append(sc.writes, sec.writes...)
		call.keysEnd, call.packedEnd, call.writesEnd = len(sc.keys), len(sc.packed), len(sc.writes)
	}
	pipe := b.c.Pipeline()
	var k, p int
	for i := range sc.calls {
		call := &sc.calls[i]
		call.keys = sc.keys[k:call.keysEnd]
		call.args = []any{now, b.shardLimit, string(sc.packed[p:call.packedEnd])}
		call.cmd = applyScript.EvalSha(ctx, pipe, call.keys, call.args...)
		k, p = call.keysEnd, call.packedEnd
	}
	if _, err := pipe.Exec(ctx); err != nil && !isNoScript(err) {
		return perWrite, unavailable("apply writes", err)
	}
	w := 0
	for i := range sc.calls {
		call := &sc.calls[i]
		cmd := call.cmd
		if isNoScript(cmd.Err()) {
			// First use on this server (or after SCRIPT FLUSH or a
			// failover): EVAL loads the script; later calls hit the cache.
			cmd = applyScript.Eval(ctx, b.c, call.keys, call.args...)
		}
		res, err := cmd.Int64Slice()
		if err != nil {
			return perWrite, unavailable("apply writes", err)
		}
		idx := sc.writes[w:call.writesEnd]
		w = call.writesEnd
		// The script names the refused groups by position, from 1.
		for _, r := range res {
			if r < 1 || int(r) > len(idx) {
				return perWrite, fmt.Errorf("apply writes: script refused group %d of %d", r, len(idx))
			}
			perWrite[idx[r-1]] = keepwatch.ErrBufferFull
		}
	}
	return perWrite, nil
}

// applyScratch is the per-call working memory of Apply, pooled because Apply
// runs once per group commit and its buffers reach a steady size.
type applyScratch struct {
	sections []shardSection // indexed by shard
	touched  []int
	calls    []scriptCall
	// The calls' keys, packed argument and write indexes, back to back.
	keys   []string
	packed []byte
	writes []int
}

// shardSection is one shard's part of a group commit.
type shardSection struct {
	users  []string // user hash keys, one per group
	packed []byte   // the groups, packed as applyScript reads them
	writes []int    // index in writes of each group
}

// scriptCall is one applyScript call: the sections up to its ends.
type scriptCall struct {
	keysEnd, packedEnd, writesEnd int
	keys                          []string
	args                          []any
	cmd                           *redis.Cmd
}

func (sc *applyScratch) reset() {
	for _, s := range sc.touched {
		sec := &sc.sections[s]
		sec.users, sec.packed, sec.writes = sec.users[:0], sec.packed[:0], sec.writes[:0]
	}
	clear(sc.calls)
	sc.touched, sc.calls = sc.touched[:0], sc.calls[:0]
	sc.keys, sc.packed, sc.writes = sc.keys[:0], sc.packed[:0], sc.writes[:0]
}

// Stats is a cheap snapshot of the buffer.
type Stats = keepwatch.BufferStats

// Stats reads the pending count and the oldest pending time: two O(1)/O(log n)
// commands per shard in one pipeline.
func (b *Buffer) Stats(ctx context.Context) (Stats, error) { return b.stats(ctx, b.ageKeys) }

// stats is Stats over the shards whose age zsets are ageKeys, which may be
// another shard count's (CheckShards).
func (b *Buffer) stats(ctx context.Context, ageKeys []string) (Stats, error) {
	pipe := b.c.Pipeline()
	cards := make([]*redis.IntCmd, len(ageKeys))
	firsts := make([]*redis.ZSliceCmd, len(ageKeys))
	for s, k := range ageKeys {
		cards[s] = pipe.ZCard(ctx, k)
		firsts[s] = pipe.ZRangeWithScores(ctx, k, 0, 0)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return Stats{}, unavailable("buffer stats", err)
	}
	var st Stats
	oldest := int64(-1)
	for s := range ageKeys {
		st.Pending += cards[s].Val()
		if z := firsts[s].Val(); len(z) > 0 && (oldest < 0 || int64(z[0].Score) < oldest) {
			oldest = int64(z[0].Score)
		}
	}
	if oldest >= 0 {
		st.Oldest = time.UnixMilli(oldest)
	}
	return st, nil
}

// Pending returns the user's pending entries, for the query side's
// read-your-writes overlay, the user's pending erase included (video id "",
// kind keepwatch.KindErased). One HGETALL.
func (b *Buffer) Pending(ctx context.Context, userID string) ([]keepwatch.Progress, error) {
	m, err := b.c.HGetAll(ctx, b.userKey(b.ShardOf(userID), userID)).Result()
	if err != nil {
		return nil, unavailable("read pending entries", err)
	}
	out := make([]keepwatch.Progress, 0, len(m))
	for video, v := range m {
		st, err := keepwatch.DecodeState(v)
		if err != nil {
			return nil, fmt.Errorf("read pending entries of %q: %w", userID, err)
		}
		out = append(out, keepwatch.Progress{UserID: userID, VideoID: video, State: st})
	}
	return out, nil
}

// Erase records the erase of everything the user has up to the event time at
// (ms), atomically: the user's pending entries at or before it are dropped,
// new entries it covers are refused until it is applied, and the erase
// itself waits in the buffer, under the video id "", for a flusher to apply
// it to MongoDB and the dead letters (see keepwatch.KindErased). It returns
// how many pending entries it dropped. Errors wrap keepwatch.ErrUnavailable;
// retrying is safe.
func (b *Buffer) Erase(ctx context.Context, userID string, at int64) (int, error) {
	st := keepwatch.EraseState(at)
	enc := st.Encode()
	shard := b.ShardOf(userID)
	n, err := eraseScript.Run(ctx, b.c, b.eraseKeys(shard, userID), b.now().UnixMilli(), enc[:13], enc, userID).Int()
	if err != nil {
		return 0, unavailable("erase pending entries", err)
	}
	return n, nil
}

// EraseDone removes the user's pending erase at the event time at, if it is
// still the pending one, once the caller applied it to MongoDB and the dead
// letters itself. Errors wrap keepwatch.ErrUnavailable.
func (b *Buffer) EraseDone(ctx context.Context, userID string, at int64) error {
	shard := b.ShardOf(userID)
	if err := eraseDoneScript.Run(ctx, b.c, b.eraseKeys(shard, userID), keepwatch.EraseState(at).Encode(), userID).Err(); err != nil {
		return unavailable("remove the pending erase", err)
	}
	return nil
}

func (b *Buffer) eraseKeys(shard int, userID string) []string {
	return []string{b.queueKeys[shard], b.ageKeys[shard], b.claimKeys[shard], b.failKeys[shard], b.userKey(shard, userID)}
}

// CheckCollation makes sure Redis' scripts compare strings byte by byte, as
// the newest-wins order of encoded states needs: Lua uses the C library's
// strcoll, and a redis-server started under a locale other than C orders
// strings by that locale's collation. It checks every master of a cluster,
// and returns an error naming the fix when one is wrong.
func (b *Buffer) CheckCollation(ctx context.Context) error {
	check := func(ctx context.Context, c redis.Scripter, where string) error {
		n, err := collationScript.Run(ctx, c, nil).Int()
		if err != nil {
			return unavailable("check redis' string order", err)
		}
		if n != 0 {
			return fmt.Errorf("redis%s compares strings in scripts by its locale's collation, not byte by byte "+
				"(check %d failed): the buffer's newest-wins order needs byte order. Start redis-server with LC_ALL=C "+
				"(or LC_COLLATE=C) in its environment", where, n)
		}
		return nil
	}
	if cc, ok := b.c.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			return check(ctx, c, " at "+c.Options().Addr)
		})
	}
	return check(ctx, b.c, "")
}

// Ping checks that Redis answers.
func (b *Buffer) Ping(ctx context.Context) error {
	if err := b.c.Ping(ctx).Err(); err != nil {
		return unavailable("ping redis", err)
	}
	return nil
}

func isNoScript(err error) bool {
	return err != nil && redis.HasErrorPrefix(err, "NOSCRIPT")
}

func unavailable(op string, err error) error {
	return fmt.Errorf("%s: %w: %w", op, keepwatch.ErrUnavailable, err)
}
