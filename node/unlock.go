package node

import (
	"context"
	"crypto/hmac"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/p2pkey/p2pkey/generations"
	"github.com/p2pkey/p2pkey/shares"
)

// UnlockProgress is what status reports while a node gathers its shares.
type UnlockProgress struct {
	Generation uint64 `json:"generation,omitempty"`
	Have       int    `json:"shares_held"`
	Need       int    `json:"threshold"`
	Reason     string `json:"reason,omitempty"`
	// Answered names the holders whose envelopes opened in the last
	// attempt, Awaiting those that have not answered with one (yet).
	Answered []string `json:"answered,omitempty"`
	Awaiting []string `json:"awaiting,omitempty"`
}

func (p UnlockProgress) equal(q UnlockProgress) bool {
	return p.Generation == q.Generation && p.Have == q.Have && p.Need == q.Need && p.Reason == q.Reason &&
		slices.Equal(p.Answered, q.Answered) && slices.Equal(p.Awaiting, q.Awaiting)
}

// unlocker paces unlock attempts: one at a time, the next one at once when
// something changed (a connection, the ledger) and after a backoff when the
// last fell short with nothing new to try (issue 13: no fixed one-second
// guard between a restart and its unlock).
type unlocker struct {
	mu       sync.Mutex
	running  bool
	next     time.Time     // no new attempt before this, unless something changed
	backoff  time.Duration // the next shortfall's wait
	since    time.Time     // when this locked period's first attempt began
	lastSeen uint64        // the change count of the last attempt
	lastHint []byte        // the unlock hint last written
}

const (
	unlockRetryMin = 100 * time.Millisecond
	unlockRetryMax = 5 * time.Second
)

// begin reports whether an attempt may start now; changed counts the
// changes this node has seen (connections, ledger).
func (u *unlocker) begin(now time.Time, changed uint64) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.running || (changed == u.lastSeen && now.Before(u.next)) {
		return false
	}
	u.running, u.lastSeen = true, changed
	if u.since.IsZero() {
		u.since = now
	}
	return true
}

// end records an attempt's outcome and, on success, returns how long the
// locked period's attempts took.
func (u *unlocker) end(now time.Time, ok bool) time.Duration {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.running = false
	if ok {
		took := now.Sub(u.since)
		u.since, u.backoff, u.next = time.Time{}, 0, time.Time{}
		return took
	}
	u.backoff = min(max(2*u.backoff, unlockRetryMin), unlockRetryMax)
	u.next = now.Add(u.backoff)
	return 0
}

// neverEscrowed reports whether this member, which has no K in memory, was
// never escrowed, so that starting over with a fresh K loses nothing: it is
// active, the ledger holds no receipt of it in any live generation and no
// key-check value, and this node's ledger is caught up with a leader (a
// ledger still replaying would make every member look so).
func (n *Node) neverEscrowed(isMem bool, me generations.Member, cov generations.Coverage, check []byte) bool {
	if !isMem || me.Status != generations.StatusActive || len(check) > 0 || cov.Generation != 0 || len(cov.Live) > 0 {
		return false
	}
	if _, ok := n.loadUnlockHint(); ok {
		return false
	}
	ctx, cancel := context.WithTimeout(n.ctx, 2*time.Second)
	defer cancel()
	return n.cons.Fresh(ctx) == nil
}

// tryUnlock fetches this node's envelopes of its newest escrowed generation
// from every holder in parallel, and combines as soon as t of one split
// have opened (rule U1). When they fall short, it tries the older committed
// generations the owner is escrowed in that the ledger still keeps (rule G4
// keeps one until the owner is escrowed with a margin in a newer one): an
// owner escrowed with exactly t shares that then loses one of them, its
// own included, still has its older set.
func (n *Node) tryUnlock(clusterID string, cov generations.Coverage, check []byte) {
	if cov.Generation == 0 {
		n.keys.setProgress(UnlockProgress{Reason: "no committed generation holds this node's shares (is the ledger still catching up?)"})
		return
	}
	if !n.unlock.begin(n.now(), n.changed.count()) {
		n.trace("unlock attempt held back: one is running, or the last fell short and nothing changed since")
		return
	}
	n.trace("unlock attempt: generation %d, threshold %d, %d holders", cov.Generation, cov.Threshold, len(cov.Holders))
	unlocked := false
	defer func() {
		if took := n.unlock.end(n.now(), unlocked); unlocked && n.cfg.Observer != nil {
			n.cfg.Observer.Unlocked(took)
		}
	}()
	var first UnlockProgress
	for i, a := range unlockAttempts(cov) {
		p, done := n.gather(clusterID, a, check, i == 0)
		if p.Reason == "" {
			unlocked = true
			return
		}
		if done {
			// Removed, lapsed or suspended: no older generation is served.
			return
		}
		if i == 0 {
			first = p
			continue
		}
		log.Infow("an older generation's shares fell short too", "generation", a.gen, "have", p.Have, "need", p.Need)
	}
	// Say what the newest escrow lacks: that is what returning holders fix.
	n.keys.setProgress(first)
}

// unlockAttempt is one generation's envelopes to gather: the generation,
// its threshold, the holders with a receipt, and the split they belong to.
type unlockAttempt struct {
	gen     uint64
	need    int
	holders []peer.ID
	split   generations.SplitID
}

// unlockAttempts lists the committed generations cov's owner is escrowed
// in, newest first.
func unlockAttempts(cov generations.Coverage) []unlockAttempt {
	out := []unlockAttempt{{cov.Generation, cov.Threshold, cov.Holders, cov.Split}}
	for _, e := range slices.Backward(cov.Live) {
		if e.Escrowed && e.Generation < cov.Generation && e.State == generations.StateCommitted {
			out = append(out, unlockAttempt{e.Generation, e.Threshold, e.Holders, e.Split})
		}
	}
	return out
}

// gather fetches a's envelopes from every holder in parallel and, as soon as
// t of one split have opened and pass the key check, unlocks. It returns
// the attempt's last progress (no Reason once unlocked) and done when no
// other generation is worth trying (a holder says this node was removed,
// lapsed or suspended). Only the newest attempt (live) reports progress as
// it goes.
func (n *Node) gather(clusterID string, a unlockAttempt, check []byte, live bool) (UnlockProgress, bool) {
	gen, need := a.gen, a.need
	ctx, cancel := context.WithTimeout(n.ctx, 5*time.Second)
	defer cancel()
	type result struct {
		holder peer.ID
		plain  []byte
		split  generations.SplitID
		err    error
	}
	results := make(chan result, len(a.holders))
	for _, h := range a.holders {
		n.redial(h)
		go func() {
			start, how := time.Now(), "connected"
			if h != n.host.ID() && !n.connected(h) {
				how = "dialled"
			}
			env, err := n.svc.Fetch(ctx, h, gen)
			n.trace("fetch generation %d from %s (%s): %v, err %v", gen, h, how, time.Since(start), err)
			if err != nil {
				results <- result{holder: h, err: err}
				return
			}
			plain, b, err := shares.Open(n.priv, env)
			results <- result{holder: h, plain: plain, split: b.Split, err: err}
		}()
	}
	groups := map[generations.SplitID][][]byte{}
	defer func() {
		for _, g := range groups {
			for _, s := range g {
				clear(s)
			}
		}
	}()
	have := 0
	var answered []string
	awaiting := ids(a.holders)
	progress := func(reason string) UnlockProgress {
		return UnlockProgress{Generation: gen, Have: have, Need: need, Reason: reason, Answered: slices.Clone(answered), Awaiting: slices.Clone(awaiting)}
	}
	setProgress := func(p UnlockProgress) {
		if live {
			n.keys.setProgress(p)
		}
	}
	if _, p, _ := n.keys.state(); p.Have == 0 && len(p.Awaiting) == 0 {
		setProgress(progress(fmt.Sprintf("gathering shares for generation %d from %d holders", gen, len(awaiting))))
	}
	lapsed, checkFailed := false, false
	var suspended error
	var failures []string
	for range a.holders {
		res := <-results
		if errors.Is(res.err, shares.ErrOwnerRemoved) {
			// A holder says this node was removed: believe the cluster.
			n.markRemoved()
			return progress("removed"), true
		}
		if errors.Is(res.err, shares.ErrOwnerLapsed) {
			lapsed = true
		}
		if errors.Is(res.err, shares.ErrOwnerSuspended) {
			suspended = res.err
		}
		if res.err != nil {
			failures = append(failures, fmt.Sprintf("%s: %v", res.holder, res.err))
			continue
		}
		// Only shares of one split combine: the ledger's escrow split when
		// it is known, else whichever split first reaches the threshold.
		id := res.split
		if a.split != (generations.SplitID{}) && id != a.split {
			clear(res.plain)
			failures = append(failures, fmt.Sprintf("%s: an envelope of another split", res.holder))
			continue
		}
		groups[id] = append(groups[id], res.plain)
		have = max(have, len(groups[id]))
		answered = append(answered, res.holder.String())
		awaiting = slices.DeleteFunc(awaiting, func(s string) bool { return s == res.holder.String() })
		setProgress(progress(fmt.Sprintf("%d of %d shares gathered for generation %d", have, need, gen)))
		log.Infow("unlock progress", "generation", gen, "have", have, "need", need, "from", res.holder, "awaiting", len(awaiting))
		if len(groups[id]) < need {
			continue
		}
		k, err := shares.Combine(groups[id])
		if err != nil {
			log.Warnw("combine shares", "generation", gen, "err", err)
			continue
		}
		if len(check) > 0 && !hmac.Equal(check, keyCheck(k, clusterID, n.host.ID())) {
			clear(k)
			log.Errorw("reconstructed key fails its key check; refusing it", "generation", gen)
			setProgress(progress(ErrKeyCheck.Error()))
			checkFailed = true
			continue
		}
		if len(check) == 0 {
			log.Warnw("no key-check value recorded; accepting the reconstructed key unchecked", "generation", gen)
		}
		n.keys.setGathered(k, gen)
		done := UnlockProgress{Generation: gen, Have: have, Need: need, Answered: answered}
		n.keys.setProgress(done)
		log.Infow("unlocked", "generation", gen, "shares", have, "threshold", need)
		n.trace("unlocked: generation %d, %d of %d shares", gen, have, need)
		n.events.publish(Event{Type: EventUnlocked, Peer: n.host.ID(), Detail: fmt.Sprintf("generation %d, %d of %d shares", gen, have, need)})
		return done, true
	}
	reason := fmt.Sprintf("%d of %d shares gathered for generation %d, fewer than the threshold of %d", have, need, gen, need)
	if lapsed {
		reason = "holders say this node lapsed (it was away longer than the retention bound); it must be invited again"
	}
	if checkFailed {
		reason = ErrKeyCheck.Error() + fmt.Sprintf(" (%d shares of generation %d combined into a key that does not match the ledger's key check)", have, gen)
	}
	if suspended != nil {
		reason = "holders say this node is suspended (a member voted to remove it); it unlocks once a majority reinstates it"
	}
	p := progress(reason)
	setProgress(p)
	// Normal while holders are still starting or unreachable: the node
	// retries on the next change, and the status says who is awaited.
	log.Infow("unlock attempt fell short; retrying as holders come back", "generation", gen, "have", have, "need", need, "failures", failures)
	return p, lapsed || suspended != nil
}

// LockState reports whether the node's key is unlocked and, while not, why.
func (n *Node) LockState() (LockState, UnlockProgress) {
	k, p, _ := n.keys.state()
	defer clear(k)
	if k == nil {
		return LockLocked, p
	}
	var can bool
	var newest uint64
	n.view(func(l *generations.Ledger) {
		can = l.Coverage(n.host.ID()).CanUnlock
		if g, ok := l.Newest(); ok {
			newest = g.Number
		}
	})
	if n.foreignKey(k) {
		// Made by this process and not the K the cluster holds (it
		// restarted mid-join): the key loop drops it.
		return LockLocked, p
	}
	if g := n.keys.gatheredFrom(); g > newest {
		// Rebuilt from a threshold of shares of a generation this node's
		// ledger has not reached yet: escrowed by construction (issue 13:
		// a restart unlocks in one round trip, not after the leader's
		// next AppendEntries). Once the ledger has caught up, it decides.
		return LockUnlocked, p
	}
	if !can {
		return LockUnescrowed, p
	}
	return LockUnlocked, p
}

// Key returns the key derived from K for purpose (rule K3). K itself never
// leaves the node. Before the node is unlocked and escrowed (rule K2) it
// returns ErrLocked with the reason, or, with wait, waits until then.
func (n *Node) Key(ctx context.Context, purpose string, wait bool) ([]byte, error) {
	if purpose == "" {
		return nil, errors.New("a key purpose is required")
	}
	for {
		state, p := n.LockState()
		if state == LockUnlocked {
			k := n.keys.get()
			if k == nil {
				continue
			}
			defer clear(k)
			return deriveKey(k, n.clusterID, purpose) // from disk: the ledger may still be catching up
		}
		reason := p.Reason
		if !wait {
			if state == LockUnescrowed && n.activeMembers() < 2 {
				return nil, ErrUnescrowed
			}
			if reason == "" {
				return nil, ErrLocked
			}
			return nil, fmt.Errorf("%w: %s", ErrLocked, strings.TrimPrefix(reason, "locked: "))
		}
		_, _, changed := n.keys.state()
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %s (%v)", ErrLocked, reason, ctx.Err())
		case <-changed:
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// unlockHint is what a node needs to unlock before its ledger has caught up:
// its newest escrowed generation, the threshold, the holders, and the
// key-check value. None of it is secret (it is all in the replicated
// ledger); it lets a node that restarts without a quorum still gather what
// shares it can and say how many it has (rule U1).
type unlockHint struct {
	Version    int      `json:"version"`
	ClusterID  string   `json:"cluster_id"`
	Generation uint64   `json:"generation"`
	Threshold  int      `json:"threshold"`
	Holders    []string `json:"holders"`
	KeyCheck   []byte   `json:"key_check"`
}

func (h unlockHint) coverage() generations.Coverage {
	c := generations.Coverage{Generation: h.Generation, Threshold: h.Threshold, SharesHeld: len(h.Holders), CanUnlock: true}
	for _, s := range h.Holders {
		if id, err := peer.Decode(s); err == nil {
			c.Holders = append(c.Holders, id)
		}
	}
	return c
}

func (n *Node) saveUnlockHint(h unlockHint) {
	data, _ := json.Marshal(h)
	n.unlock.mu.Lock()
	same := string(n.unlock.lastHint) == string(data)
	n.unlock.mu.Unlock()
	if same {
		return
	}
	if err := writeFileAtomic(n.cfg.hintPath(), data, 0o600); err != nil {
		log.Warnw("save unlock hint", "err", err)
		return
	}
	n.unlock.mu.Lock()
	n.unlock.lastHint = data
	n.unlock.mu.Unlock()
}

func (n *Node) loadUnlockHint() (unlockHint, bool) {
	var h unlockHint
	data, err := os.ReadFile(n.cfg.hintPath())
	if err != nil || json.Unmarshal(data, &h) != nil || h.Version != 1 || h.Generation == 0 || h.Threshold < 1 {
		return h, false
	}
	return h, true
}
