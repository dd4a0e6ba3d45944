package command

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/keepwatch/keepwatch"
	"github.com/keepwatch/keepwatch/internal/testenv"
	"github.com/keepwatch/keepwatch/storage/redisbuf"
)

// pausedCommitter is a group commit on a real redis-server whose writes are
// held by CLIENT PAUSE for pause, so requests pile up behind the one round
// trip in flight. waitInFlight returns once that round trip waits in Redis.
func pausedCommitter(t *testing.T, cfg CommitConfig, pause time.Duration) (c *committer, buf *redisbuf.Buffer, waitInFlight func()) {
	t.Helper()
	r := testenv.StartRedis(t)
	buf, err := redisbuf.New(r.Client(), redisbuf.Options{Shards: 2})
	if err != nil {
		t.Fatal(err)
	}
	c = newCommitter(cfg, buf, nil)
	t.Cleanup(func() {
		if !c.closed.Load() {
			c.close()
		}
	})
	admin := r.Client()
	if err := admin.Do(context.Background(), "CLIENT", "PAUSE", pause.Milliseconds(), "WRITE").Err(); err != nil {
		t.Fatal(err)
	}
	// A client held by the pause counts as blocked in INFO clients.
	waitInFlight = func() {
		t.Helper()
		testenv.Eventually(t, 10*time.Second, "a round trip held by the pause", func() bool {
			info, err := admin.Info(context.Background(), "clients").Result()
			return err == nil && strings.Contains(info, "blocked_clients:1")
		})
	}
	return c, buf, waitInFlight
}

// submitAsync stores one event of user in the background and reports the
// outcome on the returned channel.
func submitAsync(c *committer, user string) <-chan error {
	done := make(chan error, 1)
	go func() {
		done <- c.submitOne(user, keepwatch.Entry{VideoID: "v", State: keepwatch.State{EventTime: 1, Percent: 5,
			Position: keepwatch.Unknown, Duration: keepwatch.Unknown}})
	}()
	return done
}

// waitQueued waits until n requests wait in the queue behind the round trip
// in flight.
func waitQueued(t *testing.T, c *committer, n int) {
	t.Helper()
	testenv.Eventually(t, 10*time.Second, fmt.Sprintf("%d requests in the queue", n), func() bool { return len(c.in) >= n })
}

func pendingUsers(t *testing.T, buf *redisbuf.Buffer, users []string) []string {
	t.Helper()
	var have []string
	for _, u := range users {
		ps, err := buf.Pending(context.Background(), u)
		if err != nil {
			t.Fatal(err)
		}
		if len(ps) > 0 {
			have = append(have, u)
		}
	}
	return have
}

// TestFullCommitQueueRefusesWithoutStoring: past --commit-queue waiting
// requests, a request is refused at once with a 503 that names the flag, and
// nothing of it is stored; the requests that did get a place are stored once
// Redis answers again.
func TestFullCommitQueueRefusesWithoutStoring(t *testing.T) {
	c, buf, waitInFlight := pausedCommitter(t, CommitConfig{Workers: 1, MaxBatch: 1, Queue: 3, Timeout: 10 * time.Second}, 1500*time.Millisecond)
	users := []string{"inflight", "q1", "q2", "q3"}
	var answers []<-chan error
	answers = append(answers, submitAsync(c, users[0]))
	// The worker takes the first request and waits on the paused Redis;
	// the next three fill the queue.
	waitInFlight()
	for _, u := range users[1:] {
		answers = append(answers, submitAsync(c, u))
	}
	waitQueued(t, c, 3)

	err := c.submitOne("refused", keepwatch.Entry{VideoID: "v", State: keepwatch.State{EventTime: 1, Percent: 5, Position: keepwatch.Unknown, Duration: keepwatch.Unknown}})
	var ke *keepwatch.Error
	if !errors.As(err, &ke) || ke.Code != keepwatch.EUNAVAILABLE || ke.RetryAfter < 1 || !containsAll(ke.Message, "queue is full", "--commit-queue") {
		t.Fatalf("a request past the queue bound: %v, want a 503 with Retry-After naming --commit-queue", err)
	}
	for i, a := range answers {
		if err := <-a; err != nil {
			t.Errorf("queued request of %s: %v", users[i], err)
		}
	}
	if got := pendingUsers(t, buf, append(users, "refused")); fmt.Sprint(got) != fmt.Sprint(users) {
		t.Fatalf("stored %v, want exactly %v", got, users)
	}
}

// TestCloseAnswersQueuedRequests: on shutdown every request already queued is
// stored and answered, and a request that comes after close began is refused
// with a 503, not left waiting.
func TestCloseAnswersQueuedRequests(t *testing.T) {
	c, buf, waitInFlight := pausedCommitter(t, CommitConfig{Workers: 1, MaxBatch: 2, Queue: 8, Timeout: 10 * time.Second}, time.Second)
	users := []string{"a", "b", "c", "d", "e", "f"}
	var answers []<-chan error
	answers = append(answers, submitAsync(c, users[0]))
	waitInFlight()
	for _, u := range users[1:] {
		answers = append(answers, submitAsync(c, u))
	}
	waitQueued(t, c, 5)

	closed := make(chan struct{})
	go func() {
		c.close()
		close(closed)
	}()
	testenv.Eventually(t, 10*time.Second, "close to begin", c.closed.Load)
	err := c.submitOne("late", keepwatch.Entry{VideoID: "v", State: keepwatch.State{EventTime: 1, Percent: 5, Position: keepwatch.Unknown, Duration: keepwatch.Unknown}})
	if keepwatch.ErrorCode(err) != keepwatch.EUNAVAILABLE {
		t.Fatalf("a request after close began: %v, want 503", err)
	}
	for i, a := range answers {
		select {
		case err := <-a:
			if err != nil {
				t.Errorf("queued request of %s: %v", users[i], err)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("queued request of %s never answered", users[i])
		}
	}
	<-closed
	if got := pendingUsers(t, buf, append(users, "late")); fmt.Sprint(got) != fmt.Sprint(users) {
		t.Fatalf("stored %v, want exactly %v", got, users)
	}
}

func containsAll(s string, parts ...string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}
