package node

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/p2pkey/p2pkey/generations"
	"github.com/p2pkey/p2pkey/shares"
)

// Audit results for one holder.
const (
	AuditOK          = "ok"
	AuditMissing     = "missing"     // the holder no longer has the envelope
	AuditCorrupt     = "corrupt"     // it has one, but not the one recorded, or it does not open
	AuditUnreachable = "unreachable" // no answer: not evidence of loss
	AuditRefused     = "refused"     // the holder refused to serve it
)

// AuditReport is the outcome of one custody audit.
type AuditReport struct {
	Time        time.Time         `json:"time"`
	Generations []AuditGeneration `json:"generations"`
	// Lost counts holders of the current generation that lost (or
	// corrupted) this node's envelope.
	Lost int `json:"lost"`
	// Repair says what the node did about a loss.
	Repair string `json:"repair,omitempty"`
}

// AuditGeneration is one audited generation.
type AuditGeneration struct {
	Number  uint64        `json:"number"`
	Current bool          `json:"current"`
	Holders []AuditHolder `json:"holders"`
}

// AuditHolder is one holder's result.
type AuditHolder struct {
	PeerID string `json:"peer_id"`
	Result string `json:"result"`
	Error  string `json:"error,omitempty"`
}

// Audit fetches this node's envelopes from every holder of every committed
// generation it is escrowed in, and checks that each is the one recorded in
// the ledger and that it opens. If a holder of the current generation lost
// its envelope, the node repairs its escrow by opening a new generation:
// every owner then re-shares, the lost envelope is replaced by a fresh
// split, and the old generation retires once everyone is escrowed in the new
// one. (Re-sharing within the current generation is not possible: the
// holder's replacement would need a share of the same polynomial, which no
// node keeps after it is fully escrowed.)
func (n *Node) Audit(ctx context.Context) (AuditReport, error) {
	rep := AuditReport{Time: time.Now(), Generations: []AuditGeneration{}}
	if n.svc == nil || n.isRemoved() {
		return rep, ErrRemoved
	}
	self := n.host.ID()
	type target struct {
		gen     uint64
		current bool
		holders []peer.ID
		digests map[peer.ID][]byte
	}
	var targets []target
	n.view(func(l *generations.Ledger) {
		cur, _ := l.Current()
		for _, e := range l.Coverage(self).Live {
			if e.State != generations.StateCommitted {
				continue
			}
			t := target{gen: e.Generation, current: e.Generation == cur.Number, holders: e.Holders, digests: map[peer.ID][]byte{}}
			for _, h := range e.Holders {
				t.digests[h], _ = l.ReceiptDigest(e.Generation, self, h)
			}
			targets = append(targets, t)
		}
	})
	if len(targets) == 0 {
		return rep, fmt.Errorf("%w: not escrowed in any committed generation", ErrLocked)
	}
	for _, t := range targets {
		ag := AuditGeneration{Number: t.gen, Current: t.current}
		results := make(chan AuditHolder, len(t.holders))
		for _, h := range t.holders {
			go func() { results <- n.auditOne(ctx, t.gen, h, t.digests[h]) }()
		}
		for range t.holders {
			ag.Holders = append(ag.Holders, <-results)
		}
		slices.SortFunc(ag.Holders, func(a, b AuditHolder) int { return cmp.Compare(a.PeerID, b.PeerID) })
		for _, h := range ag.Holders {
			if t.current && (h.Result == AuditMissing || h.Result == AuditCorrupt) {
				rep.Lost++
			}
		}
		rep.Generations = append(rep.Generations, ag)
	}
	n.mu.Lock()
	n.lastAudit = &rep
	n.mu.Unlock()
	if rep.Lost == 0 {
		log.Infow("custody audit passed", "generations", len(rep.Generations))
		return rep, nil
	}
	log.Warnw("custody audit: holders lost this node's envelope", "lost", rep.Lost)
	n.events.publish(Event{Type: EventAuditFailed, Peer: self, Detail: fmt.Sprintf("%d holders lost an envelope", rep.Lost)})
	rep.Repair = n.repair(ctx)
	n.mu.Lock()
	n.lastAudit = &rep
	n.mu.Unlock()
	return rep, nil
}

func (n *Node) auditOne(ctx context.Context, gen uint64, holder peer.ID, digest []byte) AuditHolder {
	r := AuditHolder{PeerID: holder.String(), Result: AuditOK}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	env, err := n.svc.Fetch(cctx, holder, gen)
	switch {
	case errors.Is(err, shares.ErrNotFound):
		r.Result, r.Error = AuditMissing, err.Error()
		return r
	case errors.Is(err, shares.ErrInternal), errors.Is(err, shares.ErrBadResponse):
		r.Result, r.Error = AuditCorrupt, err.Error()
		return r
	case errors.Is(err, shares.ErrForbidden), errors.Is(err, shares.ErrOwnerRemoved), errors.Is(err, shares.ErrRateLimited):
		r.Result, r.Error = AuditRefused, err.Error()
		return r
	case err != nil:
		r.Result, r.Error = AuditUnreachable, err.Error()
		return r
	}
	d := shares.Digest(env)
	if len(digest) > 0 && !bytes.Equal(d[:], digest) {
		r.Result, r.Error = AuditCorrupt, "envelope differs from the one recorded in the ledger"
		return r
	}
	plain, _, err := shares.Open(n.priv, env)
	if err != nil {
		r.Result, r.Error = AuditCorrupt, err.Error()
		return r
	}
	clear(plain)
	return r
}

// repair opens a new generation so that every owner re-shares (see Audit).
func (n *Node) repair(ctx context.Context) string {
	var open uint64
	n.view(func(l *generations.Ledger) {
		if g, ok := l.Open(); ok {
			open = g.Number
		}
	})
	if open != 0 {
		return fmt.Sprintf("generation %d is already open; this node re-shares into it", open)
	}
	now := time.Now()
	if err := n.apply(ctx, generations.NewOpenGeneration(now.Add(n.cfg.GenerationTimeout), now)); err != nil {
		log.Warnw("repair: open a new generation", "err", err)
		return "could not open a new generation: " + err.Error()
	}
	var g uint64
	n.view(func(l *generations.Ledger) {
		if o, ok := l.Open(); ok {
			g = o.Number
		}
	})
	log.Infow("repair: opened a new generation to re-share", "generation", g)
	return fmt.Sprintf("opened generation %d to re-share", g)
}

// auditLoop runs an audit every AuditInterval.
func (n *Node) auditLoop() {
	defer n.wg.Done()
	if n.cfg.AuditInterval <= 0 {
		return
	}
	tick := time.NewTicker(n.cfg.AuditInterval)
	defer tick.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-tick.C:
		}
		if state, _ := n.Lock(); state != LockUnlocked {
			continue
		}
		ctx, cancel := context.WithTimeout(n.ctx, time.Minute)
		if _, err := n.Audit(ctx); err != nil {
			log.Debugw("audit", "err", err)
		}
		cancel()
	}
}
