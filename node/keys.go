package node

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/p2pkey/p2pkey/generations"
)

// KeySize is the size of K and of derived keys.
const KeySize = 32

// splitIDSize: every envelope's binding names the Split that
// made it. A node that restarts in the middle of a generation can only make
// a new split; the ID lets unlock combine shares of one split only.
const splitIDSize = generations.SplitSize

// Errors about the node's key.
var (
	// ErrLocked: the node cannot release keys yet (rule K2). The error text
	// says why.
	ErrLocked = errors.New("the node is locked")
	// ErrRemoved: this node was removed from the cluster and can never
	// unlock again (rule R1).
	ErrRemoved = errors.New("this node was removed from the cluster")
	// ErrKeyCheck: a reconstructed K does not match the key-check value
	// recorded in the ledger (rule K4).
	ErrKeyCheck = errors.New("reconstructed key fails its key check")
	// ErrJoinRejected: the join's generation aborted (rule J5).
	ErrJoinRejected = errors.New("join not admitted")
	// ErrUnescrowed: the cluster has one member, so K is in memory only and
	// is never released (rule K1: no split of threshold 1 is ever written).
	// It wraps ErrLocked.
	ErrUnescrowed = fmt.Errorf("%w: a cluster of one cannot protect K: invite a second node", ErrLocked)
)

// keyLoop carries out the node's custody duties whenever the ledger
// changes: unlock when locked, share K into open (and missed current)
// generations, record the key check, and delete envelopes the ledger no
// longer wants kept.
func (n *Node) keyLoop() {
	defer n.wg.Done()
	// The loop runs on every ledger change (keyPoke) and, while there is
	// work the ledger does not announce (unlocking, an open generation,
	// holders still to top up), every 500 ms; idle and unlocked it wakes
	// only every 30 s as a safety net (issue 13).
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		case <-n.keyPoke:
			if !t.Stop() {
				select {
				case <-t.C:
				default:
				}
			}
		}
		n.keyDuties()
		t.Reset(n.keyLoopInterval())
	}
}

// keyLoopInterval is 500 ms while the key loop has work in hand, 30 s when
// the node is unlocked, fully shared and nothing is open.
func (n *Node) keyLoopInterval() time.Duration {
	if state, _ := n.LockState(); state != LockUnlocked {
		return 500 * time.Millisecond
	}
	var open, needsCheck bool
	n.view(func(l *generations.Ledger) {
		_, open = l.Open()
		needsCheck = l.Duties(n.host.ID()).NeedsKeyCheck
	})
	// An open generation, a key check to record, or a ledger still
	// catching up (a restart unlocks before it has) is work in hand.
	if open || needsCheck || !n.caughtUp() {
		return 500 * time.Millisecond
	}
	if _, missing := n.missingCurrentHolders(); len(missing) > 0 {
		return 500 * time.Millisecond
	}
	return 30 * time.Second
}

func (n *Node) keyDuties() {
	if n.isRemoved() {
		return
	}
	self := n.host.ID()
	var (
		boot          bool
		clusID        string
		d             generations.Duties
		cov           generations.Coverage
		me            generations.Member
		isMem         bool
		keyCheckValue []byte
	)
	n.view(func(l *generations.Ledger) {
		boot = l.Bootstrapped()
		clusID = l.ClusterID()
		d = l.Duties(self)
		cov = l.Coverage(self)
		me, isMem = l.Member(self)
		keyCheckValue, _ = l.KeyCheck(self)
	})
	if !boot || n.svc == nil {
		if k := n.keys.get(); k != nil {
			// A joiner shares into the generation opened for it as soon as
			// its join response names it, not once its ledger catches up.
			if jg := n.joinGen.Load(); jg != nil && n.svc != nil {
				n.distribute(n.clusterID, k, jg.Number, jg.Members)
			}
			clear(k)
			return
		}
		if h, ok := n.loadUnlockHint(); ok {
			n.tryUnlock(h.ClusterID, h.coverage(), h.KeyCheck)
		} else {
			n.keys.setProgress(UnlockProgress{Reason: "waiting for the ledger to catch up with the cluster"})
		}
		return
	}
	if isMem && me.Status == generations.StatusRemoved {
		n.markRemoved()
	}
	if n.isRemoved() {
		n.sweep(d)
		return
	}
	if isMem && me.Status == generations.StatusLapsed {
		// Its shares are no longer served: the cluster cannot give K back.
		n.keys.wipe()
		n.keys.setProgress(UnlockProgress{Reason: "" + me.Reason + "; this node must be invited again"})
		n.sweep(d)
		return
	}
	if isMem && me.Suspended {
		n.keys.setProgress(UnlockProgress{Reason: fmt.Sprintf("suspended by %d of %d votes; holders keep its shares but serve none until a majority reinstates it", len(me.RemoveVotes), me.VotesNeeded)})
	}
	if n.dropForeignKey() {
		log.Infow("the key in memory is not the one the ledger records for this node; locked until a threshold of its shares is back")
	}
	k := n.keys.get()
	if k == nil && n.neverEscrowed(isMem, me, cov, keyCheckValue) {
		// A member that was never escrowed (a cluster of one, or a
		// founder restarted before anyone joined) lost nothing: K was in
		// memory only. It starts over with a fresh K (rule K1).
		if k2, err := newK(); err == nil {
			n.keys.set(k2) // the keyring keeps (and later wipes) this slice
			log.Infow("this node was never escrowed; it starts with a fresh key, unescrowed until the cluster has two members")
		}
		k = n.keys.get()
	}
	if k == nil {
		if !me.Suspended {
			// The ledger may not have caught up (no quorum yet, or replay
			// pending): then the hint saved at the last escrow is newer.
			if h, ok := n.loadUnlockHint(); ok && h.ClusterID == clusID && h.Generation > cov.Generation {
				cov, keyCheckValue = h.coverage(), h.KeyCheck
			}
			n.tryUnlock(clusID, cov, keyCheckValue)
		}
		// The store's housekeeping waits for the unlock: after a restart,
		// every retired generation is swept again (sweeps are remembered
		// per process), a store write each, and they held the first
		// unlock attempt back by up to 30 ms (issue 13).
		n.sweep(d)
		return
	}
	defer clear(k)
	n.sweep(d)
	if !n.caughtUp() {
		// Sharing on a ledger that is still replaying would split for
		// generations that are long over.
		return
	}
	if d.Open != 0 && len(d.PushTo) > 0 && !n.standBy(d.Open) {
		n.distribute(clusID, k, d.Open, d.PushTo)
	}
	if d.Current != 0 && len(d.PushToCurrent) > 0 {
		n.distribute(clusID, k, d.Current, d.PushToCurrent)
	}
	if gen, missing := n.missingCurrentHolders(); len(missing) > 0 {
		n.distribute(clusID, k, gen, missing)
	}
	if d.NeedsKeyCheck {
		ctx, cancel := context.WithTimeout(n.ctx, 10*time.Second)
		err := n.apply(ctx, generations.NewRecordKeyCheck(self, keyCheck(k, clusID, self), n.now()))
		cancel()
		if err != nil {
			log.Debugw("record key check", "err", err)
		}
	}
	n.dropSplits(d)
	n.reshareIfNoMargin(cov, d)
	switch {
	case cov.CanUnlock:
		n.keys.setProgress(UnlockProgress{Generation: cov.Generation, Have: cov.SharesHeld, Need: cov.Threshold})
		n.saveUnlockHint(unlockHint{Version: 1, ClusterID: clusID, Generation: cov.Generation, Threshold: cov.Threshold, Holders: ids(cov.Holders), KeyCheck: keyCheckValue})
	case me.Suspended:
	case d.Open == 0 && cov.Generation == 0 && n.activeMembers() < 2:
		n.keys.setProgress(UnlockProgress{Reason: strings.TrimPrefix(ErrUnescrowed.Error(), ErrLocked.Error()+": ")})
	default:
		n.keys.setProgress(UnlockProgress{Reason: "not yet escrowed in a committed generation"})
	}
}

// activeMembers counts the active members in this node's ledger.
func (n *Node) activeMembers() int {
	c := 0
	n.view(func(l *generations.Ledger) { c = len(l.Active()) })
	return c
}

// caughtUp reports whether this node has heard from a leader and applied
// everything it knows to be committed.
func (n *Node) caughtUp() bool {
	if n.cons.Leader() == "" {
		return false
	}
	st := n.cons.RaftState()
	return st.AppliedIndex >= st.CommitIndex
}

// standByFor is how long a member that the commit of an open generation
// does not need waits before it shares into it (see standBy).
const standByFor = 250 * time.Millisecond

// redialEvery bounds how often redial lets a member be dialled again.
const redialEvery = time.Second

// markRemoved makes the node locked for good: it forgets K, records the
// removal on disk so a restart with the data directory intact stays locked,
// and says why (rule R1).
func (n *Node) markRemoved() {
	if !n.removed.Swap(true) {
		log.Warnw("this node was removed from the cluster; it forgets its key and can never unlock again")
		if err := writeFileAtomic(n.cfg.removedPath(), []byte("{\"version\":1,\"removed\":true}\n"), 0o600); err != nil {
			log.Warnw("record removal", "err", err)
		}
		n.events.publish(Event{Type: EventMemberRemoved, Peer: n.host.ID(), Detail: "removed"})
	}
	n.keys.wipe()
	n.keys.setProgress(UnlockProgress{Reason: ErrRemoved.Error() + "; it can never unlock again"})
}

func (n *Node) isRemoved() bool { return n.removed.Load() }
