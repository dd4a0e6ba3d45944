package fleet

import (
	"fmt"
	"math/rand/v2"
	"time"
)

// Kind is what a request does.
type Kind uint8

// The request kinds of a fleet.
const (
	KindPost   Kind = iota // POST /v1/progress
	KindBatch              // POST /v1/progress/batch after being offline
	KindDelete             // DELETE /v1/progress/{video_id}
	KindRead               // GET /v1/keep-watching (a frontend)
	KindIdle               // nothing: the player is paused or offline
	numKinds
)

var kindNames = [numKinds]string{"post", "batch", "delete", "read", "idle"}

func (k Kind) String() string { return kindNames[k] }

// Behaviour is how players act at each of their ticks. Probabilities are per
// tick; the rest of the ticks post progress.
type Behaviour struct {
	// ReadShare is the share of ticks spent by the user's frontend reading
	// keep-watching instead of posting.
	ReadShare float64
	// Switch moves to another video (besides finishing one).
	Switch float64
	// Pause pauses for PauseTicks ticks, posting nothing.
	Pause      float64
	PauseTicks int
	// Offline goes offline for OfflineTicks ticks, then syncs what it watched
	// meanwhile in one batch.
	Offline      float64
	OfflineTicks int
	// Delete removes the current video from keep watching, then switches.
	Delete float64
	// Videos is the catalogue size.
	Videos int
	// WatchStep is how much video one tick advances the position: the
	// nominal post period, whatever the schedule compresses it to.
	WatchStep time.Duration
}

// DefaultBehaviour is a fleet mostly watching, with a few readers, pauses,
// offline syncs and deletes.
func DefaultBehaviour() Behaviour {
	return Behaviour{ReadShare: 0.05, Switch: 0.01, Pause: 0.01, PauseTicks: 3, Offline: 0.005, OfflineTicks: 6,
		Delete: 0.002, Videos: 5000, WatchStep: 10 * time.Second}
}

// Event is one progress observation, in the device's clock.
type Event struct {
	VideoID  string
	Percent  float64
	Position float64
	Duration float64
	TS       int64 // device ms
}

// Action is one player's request at one tick, built by the dispatcher and
// sent by a worker.
type Action struct {
	Kind   Kind
	Player int
	Event  Event   // post, delete (VideoID)
	Batch  []Event // batch
}

// player is one simulated viewer. Only the dispatcher touches it.
type player struct {
	rng       *rand.Rand
	skewMS    int64 // device clock minus real clock
	video     int
	position  float64
	duration  float64
	pausedFor int
	offFor    int
	pending   []Event
}

// videoDuration gives each video a fixed length of 5 to 120 minutes.
func videoDuration(v int) float64 {
	return float64(300 + (v*7919)%6900)
}

func videoID(v int) string { return fmt.Sprintf("vid-%05d", v) }

func newPlayer(i int, b Behaviour) *player {
	rng := rand.New(rand.NewPCG(uint64(i), 0x6b65657077617463)) // deterministic per player
	p := &player{rng: rng, skewMS: rng.Int64N(20*60*1000) - 10*60*1000}
	p.switchVideo(b)
	p.position = rng.Float64() * p.duration * 0.8
	return p
}

func (p *player) switchVideo(b Behaviour) {
	p.video = p.rng.IntN(max(b.Videos, 1))
	p.duration = videoDuration(p.video)
	p.position = 0
}

func (p *player) event(now time.Time) Event {
	pct := p.position / p.duration * 100
	return Event{VideoID: videoID(p.video), Percent: float64(int(pct*1000)) / 1000, Position: float64(int(p.position*1000)) / 1000,
		Duration: p.duration, TS: now.UnixMilli() + p.skewMS}
}

// tick advances the player by one period and returns what it sends now.
// now is the slot's scheduled wall time.
func (p *player) tick(b Behaviour, now time.Time) Action {
	if p.pausedFor > 0 {
		p.pausedFor--
		return Action{Kind: KindIdle}
	}
	if p.offFor > 0 {
		p.offFor--
		p.watch(b)
		if len(p.pending) < 100 {
			p.pending = append(p.pending, p.event(now))
		}
		if p.offFor == 0 {
			batch := p.pending
			p.pending = nil
			return Action{Kind: KindBatch, Batch: batch}
		}
		return Action{Kind: KindIdle}
	}
	r := p.rng.Float64()
	switch {
	case r < b.ReadShare:
		return Action{Kind: KindRead}
	case r < b.ReadShare+b.Delete:
		ev := Event{VideoID: videoID(p.video)}
		p.switchVideo(b)
		return Action{Kind: KindDelete, Event: ev}
	case r < b.ReadShare+b.Delete+b.Pause:
		p.pausedFor = b.PauseTicks
		return Action{Kind: KindIdle}
	case r < b.ReadShare+b.Delete+b.Pause+b.Offline:
		p.offFor = b.OfflineTicks
		p.pending = p.pending[:0]
		return Action{Kind: KindIdle}
	case r < b.ReadShare+b.Delete+b.Pause+b.Offline+b.Switch:
		p.switchVideo(b)
	}
	p.watch(b)
	return Action{Kind: KindPost, Event: p.event(now)}
}

// watch advances the position by one tick, moving on when the video ends.
func (p *player) watch(b Behaviour) {
	p.position += b.WatchStep.Seconds()
	if p.position >= p.duration {
		p.switchVideo(b)
	}
}
