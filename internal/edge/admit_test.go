package edge

import (
	"strconv"
	"testing"
	"time"

	"github.com/keepwatch/keepwatch/internal/auth"
)

// BenchmarkAdmitManyPlayers measures what every write pays before its body
// is read: finding the token's user and taking from the user's rate bucket,
// over 10,000 players' tokens in turn, so that lookups miss the CPU caches as
// they do under real traffic (one player's token reused in a loop would stay
// cached and hide the cost).
func BenchmarkAdmitManyPlayers(b *testing.B) {
	const players = 10_000
	v, err := auth.NewVerifier([]string{"s1"}, 1<<17)
	if err != nil {
		b.Fatal(err)
	}
	l := newRateLimiter(RateConfig{Limit: 1e9, Burst: 1e9, Users: 1_000_000})
	v.Attach(func(user string) any { return l.bucketFor(user, time.Now()) })
	toks := make([][]byte, players)
	for i := range toks {
		tok, err := auth.Mint("s1", "player-"+strconv.Itoa(i), time.Hour)
		if err != nil {
			b.Fatal(err)
		}
		toks[i] = []byte(tok)
	}
	now := time.Now()
	for _, tok := range toks { // verify once: the loop measures cache hits
		if _, _, err := v.VerifyData(tok, now); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		_, data, err := v.VerifyData(toks[i%players], now)
		if err != nil || !l.allow(data.(*Bucket), now) {
			b.Fatalf("refused: %v", err)
		}
	}
}
