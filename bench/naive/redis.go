package naive

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// putScript keeps the newer value of one hash field: values start with the
// zero-padded event time, so string order is time order.
var putScript = redis.NewScript(`
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if (not cur) or cur < ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
return 0`)

// RedisStore keeps each user's items in one hash, one script call per write.
type RedisStore struct {
	c redis.UniversalClient
}

// NewRedisStore returns a store on c.
func NewRedisStore(c redis.UniversalClient) *RedisStore { return &RedisStore{c: c} }

func userKey(user string) string { return "naive:{" + user + "}" }

// Put implements Store with one EVALSHA round trip.
func (s *RedisStore) Put(ctx context.Context, user string, it Item, deleted bool) error {
	kind := "p"
	if deleted {
		kind = "d"
	}
	v := fmt.Sprintf("%013d|%s|%g|%g|%g", it.UpdatedAt, kind, it.Percent, it.Position, it.Duration)
	if err := putScript.Run(ctx, s.c, []string{userKey(user)}, it.VideoID, v).Err(); err != nil {
		return fmt.Errorf("put progress in redis: %w", err)
	}
	return nil
}

// List implements Store with one HGETALL.
func (s *RedisStore) List(ctx context.Context, user string) ([]Item, error) {
	m, err := s.c.HGetAll(ctx, userKey(user)).Result()
	if err != nil {
		return nil, fmt.Errorf("list progress in redis: %w", err)
	}
	out := make([]Item, 0, len(m))
	for id, v := range m {
		f := strings.Split(v, "|")
		if len(f) != 5 {
			continue
		}
		it := Item{VideoID: id, deleted: f[1] == "d"}
		it.UpdatedAt, _ = strconv.ParseInt(f[0], 10, 64)
		it.Percent, _ = strconv.ParseFloat(f[2], 64)
		it.Position, _ = strconv.ParseFloat(f[3], 64)
		it.Duration, _ = strconv.ParseFloat(f[4], 64)
		out = append(out, it)
	}
	return out, nil
}
