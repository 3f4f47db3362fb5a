package consensus

import (
	"time"

	"github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// nudgeTimeout bounds how long a nudge waits to hand its barrier to Raft.
const nudgeTimeout = 5 * time.Second

// Nudge asks the leader to tell its followers at once what it has committed.
// It does not block, and does nothing on a follower.
//
// The leader already nudges after every command and configuration change it
// commits, and twice when it is elected (see nudgeLoop), so a caller needs
// Nudge only for something else it wants the followers to see now.
func (c *Consensus) Nudge() {
	select {
	case c.nudge <- struct{}{}:
		c.nudgesPending.Add(1)
	default:
	}
}

// autoNudge is the nudge after a commit, unless a test turned it off.
func (c *Consensus) autoNudge() {
	if !c.cfg.noAutoNudge {
		c.Nudge()
	}
}

// nudgeElected asks for the two barriers of a new leader.
func (c *Consensus) nudgeElected() {
	select {
	case c.elected <- struct{}{}:
		c.nudgesPending.Add(1)
	default:
	}
}

// nudgeLoop carries the leader's commit index to the followers whenever it
// is asked. hashicorp/raft sends the commit index only in AppendEntries, and
// when no new entry follows a commit, the next one goes out a random
// CommitTimeout to 2×CommitTimeout later; heartbeats do not carry it. A
// barrier is an entry, replicated at once, whose AppendEntries carries the
// commit index the leader had when it sent it, so a follower applies
// everything committed before the nudge within a round trip. Requests
// coalesce: at most one barrier is in flight and one more is queued.
//
// The barrier's own commit reaches the followers only with the next
// AppendEntries. It changes no state, and Fresh asks followers only for the
// last command at or below the commit index, so nothing waits for that.
//
// A new leader needs two: the first commits its predecessors' entries along
// with its own, which its followers cannot yet know are committed (Raft
// §5.4.2), and the second tells them.
func (c *Consensus) nudgeLoop() {
	defer close(c.nudgeDone)
	for {
		rounds := 1
		select {
		case <-c.done:
			return
		case <-c.nudge:
		case <-c.elected:
			rounds = 2
		}
		for range rounds {
			if !c.nudgeOnce() {
				break
			}
		}
		c.nudgesPending.Add(-1)
	}
}

// nudgeOnce appends a barrier and waits until it is applied, if this node
// leads and is a voter. A leader that has just appended its own removal (or
// demotion) appends nothing more: its followers refuse its AppendEntries once
// they have appended that entry (rule S8), and a refused entry behind it
// could cost them the response that commits the removal. memberMu keeps a
// configuration change from slipping in between the check and the barrier.
func (c *Consensus) nudgeOnce() bool {
	c.memberMu.Lock()
	defer c.memberMu.Unlock()
	if c.raft.State() != raft.Leader || !c.isVoter(c.ID()) {
		return false
	}
	f := c.raft.Barrier(nudgeTimeout)
	// With BatchApplyCh, Raft never answers a barrier still in its apply
	// buffer when it shuts down, so Close must not wait for the answer.
	// Such a waiter is left behind; it holds nothing but the future.
	res := make(chan error, 1)
	go func() { res <- f.Error() }()
	select {
	case err := <-res:
		return err == nil
	case <-c.done:
		return false
	}
}

// nudging reports whether a nudge is queued or running.
func (c *Consensus) nudging() bool { return c.nudgesPending.Load() > 0 }

// observeLoop follows Raft's state and leader changes: it wakes whoever
// waits on LeaderChanged, has a new leader nudge its followers, has the
// leader nudge when a follower answers heartbeats again, and logs when the
// leader loses and regains contact with a member (contactLog).
func (c *Consensus) observeLoop() {
	defer close(c.observeDone)
	for {
		select {
		case <-c.done:
			return
		case o := <-c.observations:
			switch d := o.Data.(type) {
			case raft.RaftState:
				if d == raft.Leader {
					c.nudgeElected()
				} else {
					c.contacts.forget()
				}
			case raft.FailedHeartbeatObservation:
				c.contacts.failed(d)
			case raft.ResumedHeartbeatObservation:
				c.contacts.resumed(d)
				// A follower answers again after failing: tell it what
				// it missed now rather than at the next tick.
				if c.IsLeader() {
					c.Nudge()
				}
			case raft.LeaderObservation:
				c.leaderMu.Lock()
				close(c.leaderCh)
				c.leaderCh = make(chan struct{})
				c.leaderMu.Unlock()
			}
		}
	}
}

// connected nudges when a server of the configuration connects to the
// leader: most likely a member that restarted. A restarted follower applies
// nothing past its snapshot until an AppendEntries tells it the commit index,
// and heartbeats do not; without a nudge it would wait for the next
// CommitTimeout tick. A member that restarts within a heartbeat interval is
// never seen to fail a heartbeat, so this nudge is its only one. It runs on
// libp2p's notification path, so it only reads and queues.
//
// A server that reconnects in a loop could make the leader append barrier
// after barrier; each server gets at most one such nudge per
// HeartbeatTimeout, by the node's clock. A connection inside that window is
// not dropped: its nudge comes when the window ends, one for all the
// connections in it.
func (c *Consensus) connected(_ network.Network, conn network.Conn) {
	p := conn.RemotePeer()
	if c.raft.State() != raft.Leader || !c.InConfiguration(p) {
		return
	}
	now := c.cfg.Now()
	c.connectMu.Lock()
	defer c.connectMu.Unlock()
	if c.connectDue[p] {
		return // a nudge for p is already due at the end of its window
	}
	last, seen := c.connectNudged[p]
	wait := c.heartbeat - now.Sub(last)
	if !seen || wait <= 0 {
		c.connectNudgedAt(p, now)
		c.Nudge()
		return
	}
	c.connectDue[p] = true
	time.AfterFunc(wait, func() {
		c.connectMu.Lock()
		delete(c.connectDue, p)
		c.connectNudgedAt(p, c.cfg.Now())
		c.connectMu.Unlock()
		select {
		case <-c.done:
		default:
			if c.raft.State() == raft.Leader {
				c.Nudge()
			}
		}
	})
}

// connectNudgedAt records a connect nudge for p; connectMu is held.
func (c *Consensus) connectNudgedAt(p peer.ID, now time.Time) {
	if len(c.connectNudged) >= maxConnectNudged {
		clear(c.connectNudged)
	}
	c.connectNudged[p] = now
}

// connectNudgeDue reports whether a connect nudge for p waits for the end
// of its window.
func (c *Consensus) connectNudgeDue(p peer.ID) bool {
	c.connectMu.Lock()
	defer c.connectMu.Unlock()
	return c.connectDue[p]
}

// maxConnectNudged bounds the servers connected remembers.
const maxConnectNudged = 1024

// LeaderChanged returns a channel that is closed when Raft next reports a
// different leader, or none: a way to follow Leader without polling. Take
// the channel before reading Leader, so that a change in between is not
// missed.
func (c *Consensus) LeaderChanged() <-chan struct{} {
	c.leaderMu.Lock()
	defer c.leaderMu.Unlock()
	return c.leaderCh
}
