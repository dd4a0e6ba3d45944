package command

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keepwatch/keepwatch"
)

// Applier stores writes in the buffer, each all-or-nothing. perWrite[i] is nil
// or keepwatch.ErrBufferFull; err (wrapping keepwatch.ErrUnavailable) means the
// whole call failed.
type Applier interface {
	Apply(ctx context.Context, writes []keepwatch.Write) (perWrite []error, err error)
}

// CommitConfig bounds the group commit.
type CommitConfig struct {
	// Window is how long a batch waits for more requests after its first
	// (0: send as soon as the queue is momentarily empty; batches then form
	// by themselves while earlier round trips are in flight).
	Window time.Duration
	// MaxBatch is the most requests one round trip carries.
	MaxBatch int
	// Workers is the number of round trips in flight at once.
	Workers int
	// Queue is the most requests waiting for a worker; beyond it requests are
	// refused with 503 instead of queueing without bound.
	Queue int
	// Timeout bounds one round trip.
	Timeout time.Duration
}

// committer is the group commit: concurrent requests hand their writes to a
// few workers, each of which sends many requests' writes in one pipelined
// round trip and answers each request only once its own write is
// acknowledged by Redis.
type committer struct {
	closed  atomic.Bool
	stopped chan struct{}
	cfg     CommitConfig
	buf     Applier
	in      chan *pendingWrite
	quit    chan struct{}
	pool    sync.Pool
	wg      sync.WaitGroup
	observe func(batch int, d time.Duration)
}

type pendingWrite struct {
	w    keepwatch.Write
	one  [1]keepwatch.Entry // backs w.Entries for single-event requests: no allocation
	done chan error
}

var errQueueFull = &keepwatch.Error{Code: keepwatch.EUNAVAILABLE, RetryAfter: 1,
	Message: "the write queue is full; retry shortly (operators: raise --commit-queue or add instances)"}

func newCommitter(cfg CommitConfig, buf Applier, observe func(int, time.Duration)) *committer {
	c := &committer{cfg: cfg, buf: buf, in: make(chan *pendingWrite, cfg.Queue), observe: observe, stopped: make(chan struct{}), quit: make(chan struct{})}
	c.pool.New = func() any { return &pendingWrite{done: make(chan error, 1)} }
	for range cfg.Workers {
		c.wg.Add(1)
		go c.work()
	}
	go func() {
		c.wg.Wait()
		close(c.stopped)
	}()
	return c
}

// submitOne stores one event of a user.
func (c *committer) submitOne(user string, e keepwatch.Entry) error {
	pw := c.pool.Get().(*pendingWrite)
	pw.one[0] = e
	pw.w = keepwatch.Write{UserID: user, Entries: pw.one[:]}
	return c.enqueue(pw)
}

// submit queues w and waits until it is stored or refused.
func (c *committer) submit(w keepwatch.Write) error {
	pw := c.pool.Get().(*pendingWrite)
	pw.w = w
	return c.enqueue(pw)
}

func (c *committer) enqueue(pw *pendingWrite) error {
	if c.closed.Load() {
		pw.w = keepwatch.Write{}
		c.pool.Put(pw)
		return errClosed
	}
	select {
	case c.in <- pw:
	default:
		pw.w = keepwatch.Write{}
		c.pool.Put(pw)
		return errQueueFull
	}
	var err error
	select {
	case err = <-pw.done:
	case <-c.stopped:
		// The workers drain the queue before they stop, so an answer is
		// either there now or this write was queued after they left.
		select {
		case err = <-pw.done:
		default:
			return errClosed // pw may still be in the queue: not reused
		}
	}
	pw.w = keepwatch.Write{}
	c.pool.Put(pw)
	return err
}

var errClosed = &keepwatch.Error{Code: keepwatch.EUNAVAILABLE, RetryAfter: 1, Message: "shutting down; retry on another instance"}

// close stops the workers after they have answered every queued request.
// Requests submitted afterwards get 503.
func (c *committer) close() {
	c.closed.Store(true)
	close(c.quit)
	<-c.stopped
}

func (c *committer) work() {
	defer c.wg.Done()
	batch := make([]*pendingWrite, 0, c.cfg.MaxBatch)
	writes := make([]keepwatch.Write, 0, c.cfg.MaxBatch)
	var timer *time.Timer
	if c.cfg.Window > 0 {
		timer = time.NewTimer(time.Hour)
		timer.Stop()
	}
	for {
		var first *pendingWrite
		select {
		case first = <-c.in:
		case <-c.quit:
			// Answer whatever is still queued, then stop.
			for {
				select {
				case pw := <-c.in:
					c.commit([]*pendingWrite{pw}, []keepwatch.Write{pw.w})
				default:
					return
				}
			}
		}
		batch = append(batch[:0], first)
		c.collect(&batch, timer)
		writes = writes[:0]
		for _, pw := range batch {
			writes = append(writes, pw.w)
		}
		c.commit(batch, writes)
	}
}

// collect adds queued requests to batch until it is full, the queue is empty
// (no window) or the window has passed.
func (c *committer) collect(batch *[]*pendingWrite, timer *time.Timer) {
	if timer == nil {
		for len(*batch) < c.cfg.MaxBatch {
			select {
			case pw := <-c.in:
				*batch = append(*batch, pw)
			default:
				return
			}
		}
		return
	}
	timer.Reset(c.cfg.Window)
	defer timer.Stop()
	for len(*batch) < c.cfg.MaxBatch {
		select {
		case pw := <-c.in:
			*batch = append(*batch, pw)
		case <-timer.C:
			return
		}
	}
}

var errBufferFull = &keepwatch.Error{Code: keepwatch.EUNAVAILABLE, RetryAfter: 5,
	Message: "the buffer is over its high-water mark; retry later (operators: check the flusher and MongoDB, or raise --buffer-high-water)"}

func (c *committer) commit(batch []*pendingWrite, writes []keepwatch.Write) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.Timeout)
	per, err := c.buf.Apply(ctx, writes)
	cancel()
	if c.observe != nil {
		c.observe(len(batch), time.Since(start))
	}
	for i, pw := range batch {
		switch {
		case err != nil:
			pw.done <- &keepwatch.Error{Code: keepwatch.EUNAVAILABLE, RetryAfter: 1,
				Message: "the buffer is unreachable; retry shortly", Err: err}
		case errors.Is(per[i], keepwatch.ErrBufferFull):
			pw.done <- errBufferFull
		default:
			pw.done <- per[i]
		}
	}
}
