package consensus

import (
	"time"

	"github.com/hashicorp/raft"
	"go.uber.org/zap"
)

// contactLog says once, at INFO, when the leader loses contact with a member
// and once when the member answers again. Raft reports every failed heartbeat
// (a stopped member costs a line per backoff step, 37 in 35 s); those are
// logged at DEBUG (raftLevels), and this is what an operator reads instead.
// Only observeLoop uses it.
type contactLog struct {
	log      *zap.SugaredLogger
	now      func() time.Time
	inConfig func(raft.ServerID) bool
	// lost holds the members this leader has lost contact with, and since
	// when.
	lost map[raft.ServerID]time.Time
}

func newContactLog(log *zap.SugaredLogger, now func() time.Time, inConfig func(raft.ServerID) bool) *contactLog {
	return &contactLog{log: log, now: now, inConfig: inConfig, lost: map[raft.ServerID]time.Time{}}
}

// failed records a failed heartbeat to o.PeerID; the first since contact was
// last good is logged.
func (l *contactLog) failed(o raft.FailedHeartbeatObservation) {
	// A member removed while unreachable is never heard from again.
	for id := range l.lost {
		if !l.inConfig(id) {
			delete(l.lost, id)
		}
	}
	if _, ok := l.lost[o.PeerID]; ok {
		return
	}
	l.lost[o.PeerID] = l.now()
	if o.LastContact.IsZero() {
		l.log.Infow("lost contact with member", "peer", string(o.PeerID))
		return
	}
	l.log.Infow("lost contact with member", "peer", string(o.PeerID), "last_contact", o.LastContact)
}

// resumed records that o.PeerID answers heartbeats again.
func (l *contactLog) resumed(o raft.ResumedHeartbeatObservation) {
	since, ok := l.lost[o.PeerID]
	if !ok {
		return
	}
	delete(l.lost, o.PeerID)
	l.log.Infow("member back in contact", "peer", string(o.PeerID), "unreachable_for", l.now().Sub(since).Round(time.Millisecond).String())
}

// forget drops what this node knew as leader: a new leader says for itself
// whom it cannot reach.
func (l *contactLog) forget() { clear(l.lost) }
