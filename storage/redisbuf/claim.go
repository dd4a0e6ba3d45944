package redisbuf

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keepwatch/keepwatch"
)

// Claim leases up to max due entries of a shard for lease, under a token of
// its own, and counts the claim as a failed attempt of each entry until
// Release says otherwise (see keepwatch.Claim). Entries is empty when nothing
// is due. Errors wrap keepwatch.ErrUnavailable when Redis cannot be reached;
// the entries claimed then, if any, come back when the lease expires.
func (b *Buffer) Claim(ctx context.Context, shard, max int, lease time.Duration) (*keepwatch.Claim, error) {
	return b.claim(ctx, shard, max, lease, "-inf")
}

// ClaimLapsed is Claim for the entries that became due at or after since:
// those of a claim whose lease ended then (a Claim's NextLeaseEnd) without a
// release, because its flusher died. Entries pending since before are left
// for the next regular drain, so taking over a dead flusher's batch the
// moment its lease ends does not flush anything else early.
func (b *Buffer) ClaimLapsed(ctx context.Context, shard, max int, lease time.Duration, since time.Time) (*keepwatch.Claim, error) {
	return b.claim(ctx, shard, max, lease, strconv.FormatInt(since.UnixMilli(), 10))
}

// claim claims the entries due from the score min on.
func (b *Buffer) claim(ctx context.Context, shard, max int, lease time.Duration, min string) (*keepwatch.Claim, error) {
	if shard < 0 || shard >= b.shards {
		return nil, fmt.Errorf("claim: shard %d out of range", shard)
	}
	if max < 1 || lease <= 0 {
		return nil, fmt.Errorf("claim: want at least one entry for a positive lease, got %d for %s", max, lease)
	}
	now := b.now()
	c := &keepwatch.Claim{Shard: shard, Token: newToken()}
	res, err := claimScript.Run(ctx, b.c, []string{b.queueKeys[shard], b.claimKeys[shard], b.failKeys[shard]},
		now.UnixMilli(), now.Add(lease).UnixMilli(), max, c.Token, min).Slice()
	if err != nil {
		return nil, unavailable("claim", err)
	}
	if len(res)%3 != 1 {
		return nil, fmt.Errorf("claim: script answered %d values, not the next lease end and triples", len(res))
	}
	if end := fmt.Sprint(res[0]); end != "" {
		// A float: earlier builds' deadlines had a fraction.
		ms, err := strconv.ParseFloat(end, 64)
		if err != nil {
			return nil, fmt.Errorf("claim: shard %d: malformed lease end %q", shard, end)
		}
		c.NextLeaseEnd = time.UnixMilli(int64(ms))
	}
	res = res[1:]
	if len(res) == 0 {
		return c, nil
	}
	members := make([]string, len(res)/3)
	fails := make([]keepwatch.Failures, len(members))
	for i := range members {
		m, ok1 := res[3*i].(string)
		n, ok2 := res[3*i+1].(int64)
		since, err := strconv.ParseInt(fmt.Sprint(res[3*i+2]), 10, 64)
		if !ok1 || !ok2 || err != nil {
			return nil, fmt.Errorf("claim: shard %d: malformed answer %v", shard, res[3*i:3*i+3])
		}
		members[i] = m
		if n > 0 {
			fails[i] = keepwatch.Failures{Count: int(n), Since: time.UnixMilli(since)}
		}
	}
	// Values are read after the claim: a value written in between is newer
	// than the one that was due, so writing it is right, and Release compares
	// against exactly what was read here.
	pipe := b.c.Pipeline()
	gets := make([]*redis.StringCmd, len(members))
	for i, m := range members {
		user, video, ok := keepwatch.SplitID(m)
		if !ok {
			return nil, fmt.Errorf("claim: malformed member %q in shard %d", m, shard)
		}
		gets[i] = pipe.HGet(ctx, b.userKey(shard, user), video)
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, unavailable("claim: read values", err)
	}
	var gone []releaseItem
	for i, m := range members {
		user, video, _ := keepwatch.SplitID(m)
		v, err := gets[i].Result()
		if errors.Is(err, redis.Nil) {
			// Released as done by a flusher whose claim of it had expired,
			// between the claim and the read: nothing is left to write.
			gone = append(gone, releaseItem{user: user, video: video, member: m})
			continue
		}
		if err != nil {
			return nil, unavailable("claim: read value", err)
		}
		st, err := keepwatch.DecodeState(v)
		if err != nil {
			return nil, fmt.Errorf("claim: shard %d member %q: %w", shard, m, err)
		}
		c.Entries = append(c.Entries, keepwatch.Progress{UserID: user, VideoID: video, State: st})
		c.Failures = append(c.Failures, fails[i])
	}
	if len(gone) > 0 {
		// Drop what is left of them (index, claim mark, count) now, so the
		// claim holds exactly its entries.
		if err := b.release(ctx, shard, c.Token, 0, gone); err != nil {
			return nil, fmt.Errorf("claim: %w", err)
		}
	}
	return c, nil
}

// newToken returns a claim token: 64 random bits, so two claims of the same
// entries never share one.
func newToken() string {
	return strconv.FormatUint(rand.Uint64(), 36)
}

// Renew pushes the lease of c's entries that are still under c to now +
// lease, and returns how many it renewed. Fewer than len(c.Entries) means the
// claim lost entries: its lease expired and they were claimed again (or
// released by the flusher of an older claim); the caller should stop writing
// the batch. An entry whose lease expired but that nobody claimed since is
// still under c and is renewed. Errors wrap keepwatch.ErrUnavailable when
// Redis cannot be reached; the lease then stands as it was.
func (b *Buffer) Renew(ctx context.Context, c *keepwatch.Claim, lease time.Duration) (int, error) {
	if len(c.Entries) == 0 {
		return 0, nil
	}
	if c.Shard < 0 || c.Shard >= b.shards {
		return 0, fmt.Errorf("renew: shard %d out of range", c.Shard)
	}
	args := make([]any, 0, 2+len(c.Entries))
	args = append(args, b.now().Add(lease).UnixMilli(), c.Token)
	for _, p := range c.Entries {
		args = append(args, keepwatch.ID(p.UserID, p.VideoID))
	}
	n, err := renewScript.Run(ctx, b.c, []string{b.queueKeys[c.Shard], b.claimKeys[c.Shard]}, args...).Int()
	if err != nil {
		return 0, unavailable("renew claim", err)
	}
	return n, nil
}

// Release ends a claim. done holds indexes of c.Entries that were handled
// (written, found stale, or dead-lettered): each is removed if its value is
// still the claimed one, and its failure count is cleared; a newer value
// written meanwhile stays pending. failed is how many failed write attempts
// this claim made of the other entries; 0 when it made none that counts
// (MongoDB unreachable, the flusher stopping, the claim lost), which takes
// back the attempt counted at claim time. Every entry not removed and still
// under this claim becomes due again at once.
func (b *Buffer) Release(ctx context.Context, c *keepwatch.Claim, done []int, failed int) error {
	if len(c.Entries) == 0 {
		return nil
	}
	if c.Shard < 0 || c.Shard >= b.shards {
		return fmt.Errorf("release: shard %d out of range", c.Shard)
	}
	if failed < 0 {
		return fmt.Errorf("release: failed attempts must not be negative, got %d", failed)
	}
	items := make([]releaseItem, len(c.Entries))
	for i, p := range c.Entries {
		// The encoding is canonical, so encoding the claimed state again
		// gives exactly the value that was read.
		items[i] = releaseItem{user: p.UserID, video: p.VideoID, member: keepwatch.ID(p.UserID, p.VideoID), value: p.State.Encode()}
	}
	for _, i := range done {
		if i < 0 || i >= len(items) {
			return fmt.Errorf("release: index %d out of range (%d entries)", i, len(items))
		}
		items[i].done = true
	}
	return b.release(ctx, c.Shard, c.Token, failed, items)
}

// releaseItem is one member of a release; value is "" when the claim found
// none.
type releaseItem struct {
	user, video, member, value string
	done                       bool
}

func (b *Buffer) release(ctx context.Context, shard int, token string, failed int, items []releaseItem) error {
	keys := make([]string, 0, 4+len(items))
	keys = append(keys, b.queueKeys[shard], b.ageKeys[shard], b.claimKeys[shard], b.failKeys[shard])
	args := make([]any, 0, 3+4*len(items))
	args = append(args, b.now().UnixMilli(), token, failed-1)
	for _, it := range items {
		keys = append(keys, b.userKey(shard, it.user))
		flag := "0"
		if it.done {
			flag = "1"
		}
		args = append(args, it.video, it.member, it.value, flag)
	}
	if err := releaseScript.Run(ctx, b.c, keys, args...).Err(); err != nil {
		return unavailable("release", err)
	}
	return nil
}
