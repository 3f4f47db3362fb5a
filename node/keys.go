package node

import (
	"bytes"
	"cmp"
	"context"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	mrand "math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/p2pkey/p2pkey/generations"
	gpb "github.com/p2pkey/p2pkey/generations/pb"
	"github.com/p2pkey/p2pkey/p2p"
	"github.com/p2pkey/p2pkey/shares"
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

// keyring holds K in memory, and only in memory (rule K1). A nil k means the
// node is locked.
type keyring struct {
	mu     sync.Mutex
	k      []byte
	splits map[uint64]*split
	// made lists the generations this process split K for (the splits
	// themselves are dropped once shared).
	made     map[uint64]bool
	progress UnlockProgress
	changed  chan struct{} // closed and replaced when k or progress changes
}

// split is one Shamir split of K for one generation, kept in memory so that
// every holder of the generation gets a share of the same polynomial.
type split struct {
	id     generations.SplitID
	shares map[peer.ID][]byte
	// envs keeps each holder's sealed envelope, so a retried push sends the
	// same bytes and the holder answers with the same receipt (a re-seal
	// would differ in its nonce and be refused as a duplicate).
	envs map[peer.ID]*shares.Envelope
	dup  map[peer.ID]bool // holders that refused: they hold an older split
	// held marks holders whose receipts the ledger recorded, so a joiner
	// sharing ahead of its ledger does not push to them again.
	held map[peer.ID]bool
}

// UnlockProgress is what status reports while a node gathers its shares.
type UnlockProgress struct {
	Generation uint64 `json:"generation,omitempty"`
	Have       int    `json:"have"`
	Need       int    `json:"need"`
	Reason     string `json:"reason,omitempty"`
}

func newKeyring() *keyring {
	return &keyring{splits: map[uint64]*split{}, made: map[uint64]bool{}, changed: make(chan struct{})}
}

func (kr *keyring) notifyLocked() {
	close(kr.changed)
	kr.changed = make(chan struct{})
}

func (kr *keyring) set(k []byte) {
	kr.mu.Lock()
	defer kr.mu.Unlock()
	kr.k = k
	kr.notifyLocked()
}

// get returns a copy of K, or nil when locked.
func (kr *keyring) get() []byte {
	kr.mu.Lock()
	defer kr.mu.Unlock()
	return slices.Clone(kr.k)
}

func (kr *keyring) setProgress(p UnlockProgress) {
	kr.mu.Lock()
	defer kr.mu.Unlock()
	if p != kr.progress {
		kr.progress = p
		kr.notifyLocked()
	}
}

func (kr *keyring) state() ([]byte, UnlockProgress, <-chan struct{}) {
	kr.mu.Lock()
	defer kr.mu.Unlock()
	return slices.Clone(kr.k), kr.progress, kr.changed
}

// wipe forgets K and every split, zeroing them.
func (kr *keyring) wipe() {
	kr.mu.Lock()
	defer kr.mu.Unlock()
	clear(kr.k)
	kr.k = nil
	for g, sp := range kr.splits {
		sp.wipe()
		delete(kr.splits, g)
	}
	kr.notifyLocked()
}

func (sp *split) wipe() {
	for _, s := range sp.shares {
		clear(s)
	}
}

func newK() ([]byte, error) {
	k := make([]byte, KeySize)
	_, err := rand.Read(k)
	return k, err
}

// keyCheck is the value recorded in the ledger the first time the owner is
// escrowed (rule K4): a MAC that binds K to the owner and the cluster. It
// reveals nothing about K.
func keyCheck(k []byte, clusterID string, owner peer.ID) []byte {
	m := hmac.New(sha256.New, k)
	m.Write([]byte("p2pkey/keycheck/v1\x00"))
	m.Write([]byte(clusterID))
	m.Write([]byte{0})
	m.Write([]byte(owner))
	return m.Sum(nil)
}

// DeriveKey returns the key for purpose derived from a node key k of
// cluster clusterID: HKDF-SHA256, exactly what Node.Key returns. It is
// exported for offline tools and tests that rebuild K from envelopes (the
// recovery path and the escrow invariant checker); a running node never
// hands out K itself (rule K3).
func DeriveKey(k []byte, clusterID, purpose string) ([]byte, error) {
	return deriveKey(k, clusterID, purpose)
}

// deriveKey is the only form in which K leaves the node (rule K3).
func deriveKey(k []byte, clusterID, purpose string) ([]byte, error) {
	return hkdf.Key(sha256.New, k, []byte("p2pkey/derive/v1"), clusterID+"\x00"+purpose, KeySize)
}

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
	if state, _ := n.Lock(); state != LockUnlocked {
		return 500 * time.Millisecond
	}
	var open bool
	n.view(func(l *generations.Ledger) { _, open = l.Open() })
	if open {
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
		boot    bool
		clusID  string
		d       generations.Duties
		cov     generations.Coverage
		me      generations.Member
		isMem   bool
		checkOK []byte
	)
	n.view(func(l *generations.Ledger) {
		boot = l.Bootstrapped()
		clusID = l.ClusterID()
		d = l.Duties(self)
		cov = l.Coverage(self)
		me, isMem = l.Member(self)
		checkOK, _ = l.KeyCheck(self)
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
			n.keys.setProgress(UnlockProgress{Reason: "locked: waiting for the ledger to catch up with the cluster"})
		}
		return
	}
	n.sweep(d)
	if isMem && me.Status == generations.StatusRemoved {
		n.markRemoved()
	}
	if n.isRemoved() {
		return
	}
	if isMem && me.Status == generations.StatusLapsed {
		// Its shares are no longer served: the cluster cannot give K back.
		n.keys.wipe()
		n.keys.setProgress(UnlockProgress{Reason: "locked: " + me.Reason + "; this node must be invited again"})
		return
	}
	if isMem && me.Suspended {
		n.keys.setProgress(UnlockProgress{Reason: fmt.Sprintf("locked: suspended by %d of %d votes; holders keep its shares but serve none until a majority reinstates it", len(me.RemoveVotes), me.VotesNeeded)})
	}
	if len(checkOK) > 0 && n.dropForeignKey() {
		log.Infow("the key in memory is not the one the ledger records for this node; locked until a threshold of its shares is back")
	}
	k := n.keys.get()
	if k == nil && n.neverEscrowed(isMem, me, cov, checkOK) {
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
		if me.Suspended {
			return
		}
		// The ledger may not have caught up (no quorum yet, or replay
		// pending): then the hint saved at the last escrow is newer.
		if h, ok := n.loadUnlockHint(); ok && h.ClusterID == clusID && h.Generation > cov.Generation {
			cov, checkOK = h.coverage(), h.KeyCheck
		}
		n.tryUnlock(clusID, cov, checkOK)
		return
	}
	defer clear(k)
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
		err := n.apply(ctx, generations.NewRecordKeyCheck(self, keyCheck(k, clusID, self), time.Now()))
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
		n.saveUnlockHint(unlockHint{Version: 1, ClusterID: clusID, Generation: cov.Generation, Threshold: cov.Threshold, Holders: ids(cov.Holders), KeyCheck: checkOK})
	case me.Suspended:
	case d.Open == 0 && cov.Generation == 0 && n.activeMembers() < 2:
		n.keys.setProgress(UnlockProgress{Reason: strings.TrimPrefix(ErrUnescrowed.Error(), ErrLocked.Error()+": ")})
	default:
		n.keys.setProgress(UnlockProgress{Reason: "not yet escrowed in a committed generation"})
	}
}

// dropForeignKey wipes the K in memory when the ledger records a key-check
// value for this node that K does not match, and reports whether it did. K
// never changes for a member (rule K1), so a mismatch means this process
// made a K of its own that is not the escrowed one: a joiner admitted just
// before it was killed, which resumed its join with a fresh K. Serving keys
// derived from it, or escrowing it, would be wrong; the escrowed K comes
// back from the holders.
func (n *Node) dropForeignKey() bool {
	var check []byte
	n.view(func(l *generations.Ledger) { check, _ = l.KeyCheck(n.host.ID()) })
	k := n.keys.get()
	if k == nil || len(check) == 0 {
		clear(k)
		return false
	}
	defer clear(k)
	if subtle.ConstantTimeCompare(keyCheck(k, n.ClusterID(), n.host.ID()), check) == 1 {
		return false
	}
	n.keys.wipe()
	n.keys.mu.Lock()
	clear(n.keys.made)
	n.keys.mu.Unlock()
	n.keys.setProgress(UnlockProgress{Reason: "locked: waiting for the cluster"})
	return true
}

// reshareIfNoMargin opens a generation when this node is escrowed in the
// current generation with exactly its threshold of shares and can no longer
// add any (it restarted after the commit, before topping its holders up, so
// the split is gone; mixing in a new split is never allowed). With no
// margin, one holder down would lock it out: "escrowed" must mean
// recoverable under a fault, so the cluster re-shares. Once per process.
func (n *Node) reshareIfNoMargin(cov generations.Coverage, d generations.Duties) {
	if d.Open != 0 || cov.Generation == 0 || cov.SharesHeld > cov.Threshold {
		return
	}
	var cur generations.Generation
	var ok bool
	n.view(func(l *generations.Ledger) { cur, ok = l.Current() })
	if !ok || cur.Number != cov.Generation || cov.SharesHeld >= len(cur.Members) {
		return
	}
	// Only an escrow made by an earlier process (this one never split K
	// for cur), and at most once per process: a re-share can never feed
	// another.
	n.keys.mu.Lock()
	made := n.keys.made[cur.Number]
	n.keys.mu.Unlock()
	if made || !n.reshared.CompareAndSwap(0, cur.Number) {
		return
	}
	ctx, cancel := context.WithTimeout(n.ctx, 10*time.Second)
	defer cancel()
	now := time.Now()
	if err := n.apply(ctx, generations.NewOpenGeneration(now.Add(n.cfg.GenerationTimeout), now)); err != nil {
		n.reshared.Store(0) // not done: the next pass tries again
		log.Infow("could not open a generation to restore this node's escrow margin", "generation", cur.Number, "err", err)
		return
	}
	log.Infow("opened a generation: this node's escrow had no margin (it restarted before topping its holders up)", "generation", cur.Number, "held", cov.SharesHeld, "threshold", cov.Threshold)
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
	st := n.cons.Stats()
	commit, _ := strconv.ParseUint(st["commit_index"], 10, 64)
	return n.cons.AppliedIndex() >= commit
}

// distribute splits K for generation gen (once per process), seals one
// envelope per holder, pushes them in parallel, and records the receipts.
//
// While gen is open, it pushes in rounds and stops once the generation's
// commit no longer waits on this owner: t(g) holders have its share, every
// joiner among them (rules J2-J3). The other holders get theirs once the
// generation has committed (see missingCurrentHolders), so a join does not
// pay for every member's disk writes before it can commit. A holder that
// fails is replaced at once by the next.
func (n *Node) distribute(clusterID string, k []byte, gen uint64, holders []peer.ID) {
	var g generations.Generation
	var ok bool
	n.view(func(l *generations.Ledger) { g, ok = l.Generation(gen) })
	// apply waits for this node's ledger to apply what it records; a
	// joiner that shares before its ledger exists only waits for the leader.
	apply := n.apply
	if !ok {
		jg := n.joinGen.Load()
		if jg == nil || jg.Number != gen {
			return
		}
		g = jg.generation()
		apply = func(ctx context.Context, cmd *gpb.Command) error {
			_, err := n.applyResult(ctx, cmd)
			return err
		}
	}
	n.keys.mu.Lock()
	hasSplit := n.keys.splits[g.Number] != nil
	n.keys.mu.Unlock()
	if !hasSplit && ok {
		// A new split is decided on a ledger confirmed current: a node that
		// restarted (a cold restart of the whole cluster above all) may
		// replay a ledger that does not yet show the escrow its earlier
		// process made in g, and splitting again then would replace what
		// the cluster counts (issue 12).
		fctx, fcancel := context.WithTimeout(n.ctx, freshWait)
		err := n.cons.Fresh(fctx)
		fcancel()
		if err != nil {
			log.Debugw("not splitting yet: the ledger is not confirmed current", "generation", gen, "err", err)
			return
		}
	}
	sp, envs := n.sealFor(clusterID, k, g, holders)
	if len(envs) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(n.ctx, 15*time.Second)
	defer cancel()
	self := n.host.ID()
	// Order: this node itself (no network), the joiners, then the rest in
	// random order, which spreads the owners' first rounds over the holders.
	order := slices.Collect(maps.Keys(envs))
	mrand.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	rank := func(h peer.ID) int {
		switch {
		case h == self:
			return 0
		case slices.Contains(g.Joiners, h):
			return 1
		}
		return 2
	}
	slices.SortStableFunc(order, func(a, b peer.ID) int { return cmp.Compare(rank(a), rank(b)) })

	recorded := 0
	for len(order) > 0 {
		round := order
		if g.State == generations.StateOpen {
			n.keys.mu.Lock()
			held := len(sp.held)
			joinersLeft := 0
			for _, j := range g.Joiners {
				if !sp.held[j] && slices.Contains(order, j) {
					joinersLeft++
				}
			}
			n.keys.mu.Unlock()
			if held >= g.Threshold && joinersLeft == 0 {
				break
			}
			// The round reaches the threshold and every joiner left, which
			// come first in order (after this node itself).
			size := max(g.Threshold-held, joinersLeft)
			if order[0] == self && !slices.Contains(g.Joiners, self) && joinersLeft > 0 {
				size = max(size, joinersLeft+1)
			}
			round = order[:min(size, len(order))]
		}
		order = order[len(round):]
		recorded += n.pushRound(ctx, apply, g, sp, envs, round)
	}
	if recorded > 0 {
		log.Infow("shares escrowed", "generation", gen, "receipts", recorded, "holders", len(g.Members))
	}
}

// sealFor returns gen's split of K (made on first use) and the sealed
// envelopes for those of holders that still need one.
func (n *Node) sealFor(clusterID string, k []byte, g generations.Generation, holders []peer.ID) (*split, map[peer.ID]*shares.Envelope) {
	n.keys.mu.Lock()
	defer n.keys.mu.Unlock()
	sp := n.keys.splits[g.Number]
	if sp == nil {
		// A split is made once per generation. After a restart the split
		// this node used is gone: if the ledger says it is escrowed with it,
		// it pushes nothing more (its escrow stands); if not, the new split
		// replaces the old one completely (the ledger drops the old
		// receipts). Never a mix of two polynomials.
		var escrowed bool
		n.view(func(l *generations.Ledger) {
			for _, e := range l.Coverage(n.host.ID()).Live {
				if e.Generation == g.Number && e.Escrowed {
					escrowed = true
				}
			}
		})
		if escrowed {
			return nil, nil
		}
		parts, err := shares.Split(k, len(g.Members), g.Threshold)
		if err != nil {
			log.Errorw("split key", "generation", g.Number, "err", err)
			return nil, nil
		}
		sp = &split{shares: map[peer.ID][]byte{}, envs: map[peer.ID]*shares.Envelope{}, dup: map[peer.ID]bool{}, held: map[peer.ID]bool{}}
		sp.id = shares.NewSplitID()
		for i, m := range g.Members {
			sp.shares[m] = parts[i]
		}
		n.keys.splits[g.Number] = sp
		n.keys.made[g.Number] = true
	}
	envs := map[peer.ID]*shares.Envelope{}
	for _, h := range holders {
		s, ok := sp.shares[h]
		if !ok || sp.dup[h] || sp.held[h] {
			continue
		}
		env := sp.envs[h]
		if env == nil {
			var err error
			env, err = shares.Seal(n.priv, shares.Binding{ClusterID: clusterID, Owner: n.host.ID(), Generation: g.Number, Holder: h, Split: sp.id}, s, rand.Reader)
			if err != nil {
				log.Errorw("seal envelope", "generation", g.Number, "holder", h, "err", err)
				continue
			}
			sp.envs[h] = env
		}
		envs[h] = env
	}
	return sp, envs
}

// pushRound pushes to holders in parallel and records the receipts it got,
// returning how many were recorded. Receipts go to the ledger in up to two
// batches: the first as soon as the generation's threshold is met and every
// joiner holds a share (what its commit waits for), the rest when every push
// is done, so a slow holder delays only its own receipt.
func (n *Node) pushRound(ctx context.Context, apply func(context.Context, *gpb.Command) error, g generations.Generation, sp *split, envs map[peer.ID]*shares.Envelope, holders []peer.ID) int {
	type result struct {
		holder peer.ID
		r      *shares.Receipt
		err    error
	}
	results := make(chan result, len(holders))
	for _, h := range holders {
		n.learnAddrs(h)
		n.redial(h)
		go func() {
			if hk := n.cfg.hooks; hk != nil && hk.dropPush != nil && hk.dropPush(h) {
				results <- result{holder: h, err: errors.New("push dropped by a test hook")}
				return
			}
			r, err := n.svc.Push(ctx, h, envs[h])
			results <- result{holder: h, r: r, err: err}
		}()
	}
	var batch []generations.Receipt
	recorded := 0
	record := func() bool {
		slices.SortFunc(batch, func(a, b generations.Receipt) int { return cmp.Compare(a.Holder, b.Holder) })
		if err := apply(ctx, generations.NewRecordReceipts(batch, time.Now())); err != nil {
			if errors.Is(err, generations.ErrSplitMismatch) {
				// This node is escrowed in g with a split it no longer has
				// (it restarted): its escrow stands and it pushes no more.
				// A joiner in that state lost the K it escrowed: it gives
				// up, and is told to ask for a new invite.
				n.keys.mu.Lock()
				for _, r := range batch {
					sp.dup[r.Holder] = true
				}
				n.keys.mu.Unlock()
				if slices.Contains(g.Joiners, n.host.ID()) && !n.joinGaveUp.Swap(true) {
					n.giveUpJoin(g, true)
				}
				return false
			}
			log.Warnw("record receipts", "generation", g.Number, "receipts", len(batch), "err", err)
			return false
		}
		recorded += len(batch)
		n.keys.mu.Lock()
		for _, r := range batch {
			sp.held[r.Holder] = true
		}
		n.keys.mu.Unlock()
		batch = nil
		return true
	}
	early := true
	for i := range len(holders) {
		res := <-results
		switch {
		case res.err == nil:
			batch = append(batch, generations.Receipt{
				Generation: g.Number, Owner: res.r.Owner, Holder: res.r.Holder, Split: sp.id,
				Digest: res.r.Digest[:], Signature: res.r.Signature,
			})
		case errors.Is(res.err, shares.ErrDuplicate):
			// The holder keeps an envelope of an earlier split (this node
			// restarted mid-generation). It cannot take this one.
			n.keys.mu.Lock()
			sp.dup[res.holder] = true
			n.keys.mu.Unlock()
			log.Warnw("holder keeps an envelope of an earlier split; skipping it", "generation", g.Number, "holder", res.holder)
		default:
			log.Debugw("push share", "generation", g.Number, "holder", res.holder, "err", res.err)
		}
		if early && i < len(holders)-1 && len(batch) >= g.Threshold && holdsAll(batch, g.Joiners) {
			early = false
			if !record() {
				return recorded
			}
		}
	}
	if len(batch) > 0 {
		record()
	}
	return recorded
}

// standByFor is how long a member that the commit of an open generation
// does not need waits before it shares into it (see standBy).
const standByFor = 250 * time.Millisecond

// standBy reports whether this node should hold back its sharing into open
// generation gen for now. A generation commits once t(g) owners are
// escrowed and every joiner holds t(g) shares (rules J2-J3): the joiners,
// the leader, and t(g)-|joiners|-1 other members suffice. Those go at once;
// the rest, picked by a hash of (generation, member) so every node agrees,
// wait standByFor after they first see the generation open, so the commit
// does not queue behind their disk writes. If the generation has not
// committed by then they share like everyone else.
func (n *Node) standBy(gen uint64) bool {
	self := n.host.ID()
	var g generations.Generation
	var ok bool
	n.view(func(l *generations.Ledger) { g, ok = l.Generation(gen) })
	if !ok || g.State != generations.StateOpen || slices.Contains(g.Joiners, self) {
		return false
	}
	leader := n.cons.Leader()
	if self == leader || leader == "" || !slices.Contains(standingBy(g, leader), self) {
		return false
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.openSeen == nil || n.openSeen[gen].IsZero() {
		n.openSeen = map[uint64]time.Time{gen: time.Now()}
		time.AfterFunc(standByFor, n.pokeKeys)
		return true
	}
	return time.Since(n.openSeen[gen]) < standByFor
}

// standingBy lists the members of open generation g that its commit does
// not wait for, given its leader: all but the joiners, the leader, and the
// first t(g)-|joiners|-1 others by a hash of (generation, member).
func standingBy(g generations.Generation, leader peer.ID) []peer.ID {
	var others []peer.ID
	for _, m := range g.Members {
		if m != leader && !slices.Contains(g.Joiners, m) {
			others = append(others, m)
		}
	}
	rank := func(p peer.ID) [32]byte {
		return sha256.Sum256(fmt.Appendf(nil, "p2pkey/standby/%d/%s", g.Number, p))
	}
	slices.SortFunc(others, func(a, b peer.ID) int {
		ra, rb := rank(a), rank(b)
		return bytes.Compare(ra[:], rb[:])
	})
	first := max(0, g.Threshold-len(g.Joiners)-1)
	if !slices.Contains(g.Members, leader) {
		first++ // the leader is not an owner of g: one more member must go
	}
	if first >= len(others) {
		return nil
	}
	return others[first:]
}

// redialEvery bounds how often redial lets a member be dialled again.
const redialEvery = time.Second

// redial lets the next stream to member p dial it even if a recent dial
// failed, at most once per redialEvery: a member behind a relay is often
// dialled before the relay connection is back (after a restart), and the
// swarm's backoff would otherwise hold it off for far longer.
func (n *Node) redial(p peer.ID) {
	if !n.connected(p) && n.redials.Allow(p, time.Now()) {
		p2p.ClearDialBackoff(n.host, p)
	}
}

// holdsAll reports whether batch has a receipt by every one of holders.
func holdsAll(batch []generations.Receipt, holders []peer.ID) bool {
	for _, h := range holders {
		if !slices.ContainsFunc(batch, func(r generations.Receipt) bool { return r.Holder == h }) {
			return false
		}
	}
	return true
}

// missingCurrentHolders lists the holders of the current generation that
// have no receipt for this node yet, when this node still has the split it
// used for that generation. A node that is escrowed keeps topping its
// coverage up to every member; after a restart it has no split, and stops.
func (n *Node) missingCurrentHolders() (uint64, []peer.ID) {
	self := n.host.ID()
	var gen uint64
	var missing []peer.ID
	n.view(func(l *generations.Ledger) {
		cur, ok := l.Current()
		if !ok {
			return
		}
		m, ok := l.Matrix(cur.Number)
		if !ok {
			return
		}
		i := slices.Index(m.Peers, self)
		if i < 0 {
			return
		}
		gen = cur.Number
		for j, h := range m.Peers {
			if !m.Held[i][j] {
				missing = append(missing, h)
			}
		}
	})
	n.keys.mu.Lock()
	defer n.keys.mu.Unlock()
	if n.keys.splits[gen] == nil {
		return 0, nil
	}
	return gen, missing
}

// dropSplits forgets splits of generations that are no longer being shared
// into.
func (n *Node) dropSplits(d generations.Duties) {
	cur, missing := n.missingCurrentHolders()
	if len(missing) == 0 {
		cur = 0 // fully held: the split is no longer needed
	}
	n.keys.mu.Lock()
	defer n.keys.mu.Unlock()
	joining := uint64(0)
	if jg := n.joinGen.Load(); jg != nil {
		joining = jg.Number // ahead of a ledger that is still catching up
	}
	for g, sp := range n.keys.splits {
		if g == d.Open || g == d.Current || g == joining || (g == cur && len(sp.dup) == 0) {
			continue
		}
		sp.wipe()
		delete(n.keys.splits, g)
	}
}

// sweep deletes envelopes the ledger says must go: those of aborted and
// retired generations and of removed owners (rules G3, G4, R1). It acts only
// on what the ledger names explicitly, so a ledger that is still catching up
// never causes a deletion.
func (n *Node) sweep(d generations.Duties) {
	for _, g := range d.DeleteGenerations {
		if n.swept(fmt.Sprint("g", g)) {
			continue
		}
		if err := n.store.DeleteGeneration(g); err != nil {
			log.Warnw("delete envelopes of generation", "generation", g, "err", err)
			continue
		}
		n.markSwept(fmt.Sprint("g", g))
		log.Infow("deleted envelopes of a finished generation", "generation", g)
	}
	for _, lo := range d.DeleteLapsedOwners {
		// A lapsed owner may come back with the same identity, so this
		// sweep is keyed by how far it reaches, not remembered per owner.
		key := fmt.Sprintf("l%s/%d", lo.Owner, lo.Through)
		if n.swept(key) {
			continue
		}
		keys, err := n.store.List()
		if err != nil {
			log.Warnw("list envelopes", "err", err)
			continue
		}
		var dead []shares.Key
		for _, k := range keys {
			if k.Owner == lo.Owner && k.Generation <= lo.Through {
				dead = append(dead, k)
			}
		}
		if err := n.store.DeleteKeys(dead); err != nil {
			log.Warnw("delete envelopes of lapsed owner", "owner", lo.Owner, "err", err)
			continue
		}
		n.markSwept(key)
		log.Infow("deleted envelopes of a lapsed owner", "owner", lo.Owner, "through", lo.Through)
	}
	for _, o := range d.DeleteOwners {
		if n.swept("o" + string(o)) {
			continue
		}
		if err := n.store.DeleteOwner(o); err != nil {
			log.Warnw("delete envelopes of removed owner", "owner", o, "err", err)
			continue
		}
		n.markSwept("o" + string(o))
		log.Infow("deleted envelopes of a removed owner", "owner", o)
	}
}

func (n *Node) swept(key string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.sweptSet[key]
}

func (n *Node) markSwept(key string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.sweptSet[key] = true
}

// tryUnlock fetches this node's envelopes of its newest escrowed generation
// from every holder in parallel, and combines as soon as t of one split
// have opened (rule U1).
func (n *Node) tryUnlock(clusterID string, cov generations.Coverage, check []byte) {
	if cov.Generation == 0 {
		n.keys.setProgress(UnlockProgress{Reason: "locked: no committed generation holds this node's shares (is the ledger still catching up?)"})
		return
	}
	n.mu.Lock()
	if time.Since(n.lastUnlock) < time.Second {
		n.mu.Unlock()
		return
	}
	n.lastUnlock = time.Now()
	n.mu.Unlock()

	gen, need := cov.Generation, cov.Threshold
	ctx, cancel := context.WithTimeout(n.ctx, 5*time.Second)
	defer cancel()
	type result struct {
		holder peer.ID
		plain  []byte
		split  generations.SplitID
		err    error
	}
	results := make(chan result, len(cov.Holders))
	for _, h := range cov.Holders {
		n.redial(h)
		go func() {
			env, err := n.svc.Fetch(ctx, h, gen)
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
	lapsed := false
	var suspended error
	var failures []string
	for range cov.Holders {
		res := <-results
		if errors.Is(res.err, shares.ErrOwnerRemoved) {
			// A holder says this node was removed: believe the cluster.
			n.markRemoved()
			return
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
		if cov.Split != (generations.SplitID{}) && id != cov.Split {
			clear(res.plain)
			failures = append(failures, fmt.Sprintf("%s: an envelope of another split", res.holder))
			continue
		}
		groups[id] = append(groups[id], res.plain)
		have = max(have, len(groups[id]))
		n.keys.setProgress(UnlockProgress{Generation: gen, Have: have, Need: need, Reason: fmt.Sprintf("locked: %d of %d shares gathered for generation %d", have, need, gen)})
		log.Infow("unlock progress", "generation", gen, "have", have, "need", need)
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
			n.keys.setProgress(UnlockProgress{Generation: gen, Have: have, Need: need, Reason: ErrKeyCheck.Error()})
			continue
		}
		if len(check) == 0 {
			log.Warnw("no key-check value recorded; accepting the reconstructed key unchecked", "generation", gen)
		}
		n.keys.set(k)
		n.keys.setProgress(UnlockProgress{Generation: gen, Have: have, Need: need})
		log.Infow("unlocked", "generation", gen, "shares", have, "threshold", need)
		n.events.publish(Event{Type: EventUnlocked, Peer: n.host.ID(), Detail: fmt.Sprintf("generation %d, %d of %d shares", gen, have, need)})
		return
	}
	reason := fmt.Sprintf("locked: %d of %d shares gathered for generation %d, fewer than the threshold of %d", have, need, gen, need)
	if lapsed {
		reason = "locked: holders say this node lapsed (it was away longer than the retention bound); it must be invited again"
	}
	if suspended != nil {
		reason = "locked: holders say this node is suspended (a member voted to remove it); it unlocks once a majority reinstates it"
	}
	n.keys.setProgress(UnlockProgress{Generation: gen, Have: have, Need: need, Reason: reason})
	log.Warnw("unlock attempt fell short", "generation", gen, "have", have, "need", need, "failures", failures)
}

// Lock reports the lock state and, while not unlocked, why.
func (n *Node) Lock() (string, UnlockProgress) {
	k, p, _ := n.keys.state()
	defer clear(k)
	if k == nil {
		return LockLocked, p
	}
	var can bool
	n.view(func(l *generations.Ledger) { can = l.Coverage(n.host.ID()).CanUnlock })
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
		state, p := n.Lock()
		if state == LockUnlocked {
			k := n.keys.get()
			if k == nil {
				continue
			}
			defer clear(k)
			return deriveKey(k, n.ClusterID(), purpose)
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

// sharePolicy answers the share protocol's questions from the ledger (rules
// S2, S3). Holders serve envelopes even while they are locked themselves.
type sharePolicy struct{ n *Node }

// pushWait bounds how long a holder waits for its own ledger to learn of a
// generation an owner is already pushing into: the owner saw the generation
// open a commit round trip earlier.
const pushWait = 500 * time.Millisecond

func (p sharePolicy) AllowPush(owner peer.ID, gen uint64) error {
	timeout := time.NewTimer(pushWait)
	defer timeout.Stop()
	jgSet := p.n.joinGenSet
	for {
		applied := p.n.cons.AppliedChan()
		err := p.allowPush(owner, gen)
		if !errors.Is(err, errGenerationUnknown) {
			return err
		}
		select {
		case <-p.n.ctx.Done():
			return err
		case <-timeout.C:
			return err
		case <-applied:
		case <-jgSet:
			jgSet = nil // fires once
		}
	}
}

var errGenerationUnknown = errors.New("generation is unknown to this holder")

func (p sharePolicy) allowPush(owner peer.ID, gen uint64) error {
	self := p.n.host.ID()
	var err error
	p.n.view(func(l *generations.Ledger) {
		if m, ok := l.Member(owner); ok && m.Status == generations.StatusRemoved {
			err = fmt.Errorf("%w: %s", shares.ErrOwnerRemoved, owner)
			return
		}
		g, ok := l.Generation(gen)
		if jg := p.n.joinGen.Load(); !ok && jg != nil && jg.Number == gen {
			// A joiner whose ledger has not caught up yet holds for the
			// generation its join response named.
			g, ok = jg.generation(), true
		}
		if !ok {
			err = fmt.Errorf("%w: %w: %d", shares.ErrGenerationNotOpen, errGenerationUnknown, gen)
			return
		}
		cur, hasCur := l.Current()
		if g.State != generations.StateOpen && !(hasCur && cur.Number == gen) {
			err = fmt.Errorf("%w: generation %d is %s", shares.ErrGenerationNotOpen, gen, g.State)
			return
		}
		if !slices.Contains(g.Members, owner) || !slices.Contains(g.Members, self) {
			err = fmt.Errorf("%w: owner or holder is not in generation %d", shares.ErrForbidden, gen)
		}
	})
	return err
}

// freshWait bounds how long a holder waits to confirm that its ledger is
// caught up with a leader before it serves an envelope (rule S9).
const freshWait = 3 * time.Second

// splitDecision decides a push of another split for (gen, owner) than the
// one this holder stores: the stored envelope is replaced unless the ledger
// records owner as escrowed in gen with it. An owner that restarted mid-
// generation replaces a split it never completed; an escrowed split is
// never overwritten, so a holder never loses a share the ledger counts.
func (p sharePolicy) splitDecision(owner peer.ID, gen uint64, stored, pushed generations.SplitID) error {
	escrowedWith := func() (split generations.SplitID, escrowed bool) {
		p.n.view(func(l *generations.Ledger) {
			for _, e := range l.Coverage(owner).Live {
				if e.Generation == gen && e.Escrowed {
					split, escrowed = e.Split, true
				}
			}
		})
		return split, escrowed
	}
	if split, escrowed := escrowedWith(); escrowed && split == stored {
		return shares.RefuseNewSplit(owner, gen, stored, pushed)
	}
	// Replacing is decided on a ledger confirmed current: a holder that
	// restarted may not yet have applied the receipts that made the stored
	// split the counted one (issue 12). Unconfirmed, it keeps what it has;
	// the owner's next round asks again.
	ctx, cancel := context.WithTimeout(p.n.ctx, freshWait)
	defer cancel()
	if err := p.n.cons.Fresh(ctx); err != nil {
		return fmt.Errorf("%w: this holder cannot confirm its ledger is current (%v), so it keeps the split it has", shares.ErrForbidden, err)
	}
	if split, escrowed := escrowedWith(); escrowed && split == stored {
		return shares.RefuseNewSplit(owner, gen, stored, pushed)
	}
	return nil
}

func (p sharePolicy) AllowFetch(owner peer.ID, gen uint64) error {
	// Serve only from a ledger caught up with a leader heard from now: a
	// holder cut off while a removal or suspension committed must not serve
	// from its stale copy (rule S9).
	ctx, cancel := context.WithTimeout(p.n.ctx, freshWait)
	defer cancel()
	if err := p.n.cons.Fresh(ctx); err != nil {
		return fmt.Errorf("%w: this holder cannot confirm its ledger is current (%v); it serves no envelope until it can", shares.ErrForbidden, err)
	}
	var err error
	p.n.view(func(l *generations.Ledger) {
		if m, ok := l.Member(owner); ok && m.Status == generations.StatusRemoved {
			err = fmt.Errorf("%w: %s", generations.ErrOwnerRemoved, owner)
			return
		} else if ok && m.Status == generations.StatusLapsed {
			err = fmt.Errorf("%w: %s", generations.ErrOwnerLapsed, owner)
			return
		}
		err = l.ServeAllowed(gen, owner, p.n.host.ID())
	})
	switch {
	case err == nil:
		return nil
	case errors.Is(err, generations.ErrOwnerSuspended):
		return fmt.Errorf("%w: %v", shares.ErrOwnerSuspended, err)
	case errors.Is(err, generations.ErrOwnerLapsed):
		return fmt.Errorf("%w: %v", shares.ErrOwnerLapsed, err)
	case errors.Is(err, generations.ErrOwnerRemoved):
		return fmt.Errorf("%w: %v", shares.ErrOwnerRemoved, err)
	default:
		return fmt.Errorf("%w: %v", shares.ErrForbidden, err)
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
	n.mu.Lock()
	same := string(n.lastHint) == string(data)
	n.mu.Unlock()
	if same {
		return
	}
	if err := writeFileAtomic(n.cfg.hintPath(), data, 0o600); err != nil {
		log.Warnw("save unlock hint", "err", err)
		return
	}
	n.mu.Lock()
	n.lastHint = data
	n.mu.Unlock()
}

func (n *Node) loadUnlockHint() (unlockHint, bool) {
	var h unlockHint
	data, err := os.ReadFile(n.cfg.hintPath())
	if err != nil || json.Unmarshal(data, &h) != nil || h.Version != 1 || h.Generation == 0 || h.Threshold < 1 {
		return h, false
	}
	return h, true
}

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
