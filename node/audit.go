package node

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/p2pkey/p2pkey/generations"
	"github.com/p2pkey/p2pkey/shares"
)

// Audit results for one holder.
const (
	AuditOK          = "ok"
	AuditMissing     = "missing"     // the holder answered that it has no such envelope
	AuditCorrupt     = "corrupt"     // an envelope came back and failed its check
	AuditUnreachable = "unreachable" // no answer (dial failure, timeout, reset): not evidence of loss
	AuditRefused     = "refused"     // the holder refused to serve it
)

// defaultAuditGrace is how long a holder of the current generation may stay
// unreachable before the audit repairs around it.
const defaultAuditGrace = time.Hour

// auditFetchTimeout bounds one holder's fetch.
const auditFetchTimeout = 5 * time.Second

// auditGrace is how long a holder may stay unreachable before an audit
// opens a repair generation for it.
func (n *Node) auditGrace() time.Duration {
	if n.cfg.AuditGrace > 0 {
		return n.cfg.AuditGrace
	}
	return defaultAuditGrace
}

// AuditReport is the outcome of one custody audit.
type AuditReport struct {
	Time        time.Time         `json:"time"`
	Generations []AuditGeneration `json:"generations"`
	// Lost counts holders of the current generation that lost (or
	// corrupted) this node's envelope.
	Lost int `json:"lost"`
	// Unreachable counts holders of the current generation that did not
	// answer. They are repaired around only once they have stayed away for
	// the grace period (see AuditHolder.RepairAt).
	Unreachable int `json:"unreachable"`
	// Repair says what the node did about a loss, or why it did nothing
	// yet.
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
	// Result is one of AuditOK, AuditMissing, AuditCorrupt,
	// AuditUnreachable and AuditRefused.
	Result string `json:"result"`
	Error  string `json:"error,omitempty"`
	// UnreachableSince is when this node's audits first found the holder
	// unreachable, without an answer since (unreachable only; kept in
	// memory, so it restarts with the node).
	UnreachableSince time.Time `json:"unreachable_since,omitzero"`
	// RepairAt is when a repair opens if the holder is still unreachable
	// (unreachable holders of the current generation only).
	RepairAt time.Time `json:"repair_at,omitzero"`
}

// auditMemory is what a node's audits remember from one to the next.
type auditMemory struct {
	// mu is held for a whole audit: audits run one at a time.
	mu sync.Mutex
	// since is when each holder was first found unreachable, without an
	// answer since.
	since map[string]time.Time
	// repaired maps each loss a repair generation was opened for to that
	// generation, so one loss never opens two.
	repaired map[lossKey]uint64
}

// lossKey names one loss: an envelope of the current generation that a
// holder lost or corrupted (gen set, since zero), or one period during
// which a holder stayed unreachable (gen 0, since set). A holder that is
// still away after the repair is not a new loss: the repair generation
// holds no envelope of the owner on it.
type lossKey struct {
	holder string // peer ID
	gen    uint64
	since  time.Time
}

// auditMemories holds each running node's auditMemory, dropped when the
// node closes.
var auditMemories sync.Map // *Node → *auditMemory

func (n *Node) auditMem() *auditMemory {
	if m, ok := auditMemories.Load(n); ok {
		return m.(*auditMemory)
	}
	m, loaded := auditMemories.LoadOrStore(n, &auditMemory{since: map[string]time.Time{}, repaired: map[lossKey]uint64{}})
	if !loaded && n.ctx != nil {
		context.AfterFunc(n.ctx, func() { auditMemories.Delete(n) })
	}
	return m.(*auditMemory)
}

// Audit fetches this node's envelopes from every holder of every committed
// generation it is escrowed in, and checks that each is the one recorded in
// the ledger and that it opens.
//
// A holder that answers without the envelope (missing) or with one that
// fails its check (corrupt) has lost it. A holder that does not answer is
// unreachable, which is not evidence of loss: it is repaired around only
// once it has stayed unreachable for the grace period.
//
// The node repairs its escrow by opening a new generation: every owner
// then re-shares, the lost envelope is replaced by a fresh split, and the
// old generation retires once everyone is escrowed in the new one.
// (Re-sharing within the current generation is not possible: the holder's
// replacement would need a share of the same polynomial, which no node
// keeps after it is fully escrowed.) No repair opens while a generation is
// open, and one loss never opens two repair generations.
func (n *Node) Audit(ctx context.Context) (AuditReport, error) {
	return n.audit(ctx, n.auditGrace())
}

// auditTarget is one generation to audit.
type auditTarget struct {
	gen     uint64
	current bool
	holders []peer.ID
	digests map[peer.ID][]byte
}

func (n *Node) audit(ctx context.Context, grace time.Duration) (AuditReport, error) {
	rep := AuditReport{Time: n.now(), Generations: []AuditGeneration{}}
	if n.svc == nil || n.isRemoved() {
		return rep, ErrRemoved
	}
	mem := n.auditMem()
	mem.mu.Lock()
	defer mem.mu.Unlock()

	self := n.host.ID()
	var targets []auditTarget
	n.view(func(l *generations.Ledger) {
		cur, _ := l.Current()
		for _, e := range l.Coverage(self).Live {
			if e.State != generations.StateCommitted {
				continue
			}
			t := auditTarget{gen: e.Generation, current: e.Generation == cur.Number, holders: e.Holders, digests: map[peer.ID][]byte{}}
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
		rep.Generations = append(rep.Generations, ag)
	}

	var cur uint64
	if i := slices.IndexFunc(targets, func(t auditTarget) bool { return t.current }); i >= 0 {
		cur = targets[i].gen
	}
	now := n.now()
	losses := mem.observe(&rep, now, grace, cur)
	n.setLastAudit(&rep)

	if rep.Lost > 0 {
		log.Warnw("custody audit: holders lost this node's envelope", "lost", rep.Lost)
		n.events.publish(Event{Type: EventAuditFailed, Peer: self, Detail: fmt.Sprintf("%d holders lost an envelope", rep.Lost)})
	}
	var due []lossKey
	n.view(func(l *generations.Ledger) {
		due = mem.due(losses, func(g uint64) bool {
			st, ok := l.Generation(g)
			return ok && st.State != generations.StateAborted
		})
	})
	switch {
	case len(due) > 0:
		rep.Repair = n.repair(ctx, mem, due)
	case len(losses) > 0:
		rep.Repair = mem.repairedNote(losses)
	case rep.Unreachable > 0:
		rep.Repair = waitingNote(rep)
	default:
		log.Infow("custody audit passed", "generations", len(rep.Generations))
	}
	if rep.Unreachable > 0 {
		log.Infow("custody audit: holders unreachable", "unreachable", rep.Unreachable, "grace", grace)
	}
	n.setLastAudit(&rep)
	return rep, nil
}

func (n *Node) setLastAudit(rep *AuditReport) {
	c := *rep
	n.lastAudit.Store(&c)
}

// observe updates the memory with one audit's results, fills in the
// report's counts and the unreachable holders' times, and returns the
// losses of the current generation cur that call for a repair now: every
// missing or corrupt envelope, and every holder unreachable for at least
// grace.
func (m *auditMemory) observe(rep *AuditReport, now time.Time, grace time.Duration, cur uint64) []lossKey {
	// A holder that answered anything, in any generation, is up.
	answered := map[string]bool{}
	for _, g := range rep.Generations {
		for _, h := range g.Holders {
			if h.Result != AuditUnreachable {
				answered[h.PeerID] = true
			} else if !answered[h.PeerID] {
				answered[h.PeerID] = false
			}
		}
	}
	for p := range m.since {
		if up, seen := answered[p]; !seen || up {
			delete(m.since, p)
		}
	}
	for p, up := range answered {
		if _, ok := m.since[p]; !up && !ok {
			m.since[p] = now
		}
	}

	var losses []lossKey
	for gi := range rep.Generations {
		g := &rep.Generations[gi]
		for hi := range g.Holders {
			h := &g.Holders[hi]
			p := h.PeerID
			if h.Result == AuditUnreachable && !answered[p] {
				h.UnreachableSince = m.since[p]
			}
			if !g.Current {
				continue
			}
			switch h.Result {
			case AuditMissing, AuditCorrupt:
				rep.Lost++
				losses = append(losses, lossKey{holder: p, gen: g.Number})
			case AuditUnreachable:
				rep.Unreachable++
				if h.UnreachableSince.IsZero() {
					continue // it answered for another generation
				}
				h.RepairAt = h.UnreachableSince.Add(grace)
				if !now.Before(h.RepairAt) {
					losses = append(losses, lossKey{holder: p, since: h.UnreachableSince})
				}
			}
		}
	}

	// Forget repairs of losses that are over: the generation is no longer
	// the current one, or the holder has answered since.
	for k := range m.repaired {
		if k.gen != 0 && k.gen != cur {
			delete(m.repaired, k)
		}
		if k.gen == 0 && !m.since[k.holder].Equal(k.since) {
			delete(m.repaired, k)
		}
	}
	return losses
}

// due returns the losses no repair generation was opened for yet, or whose
// repair generation aborted; live says whether a generation is open or
// committed (or retired).
func (m *auditMemory) due(losses []lossKey, live func(uint64) bool) []lossKey {
	var out []lossKey
	for _, k := range losses {
		if g, ok := m.repaired[k]; ok && live(g) {
			continue
		}
		out = append(out, k)
	}
	return out
}

// repairedNote says which generation already repairs losses.
func (m *auditMemory) repairedNote(losses []lossKey) string {
	var gens []uint64
	for _, k := range losses {
		if g, ok := m.repaired[k]; ok && !slices.Contains(gens, g) {
			gens = append(gens, g)
		}
	}
	slices.Sort(gens)
	return fmt.Sprintf("already repairing: generation %s was opened for this", joinUints(gens))
}

// waitingNote says when unreachable holders will be repaired around.
func waitingNote(rep AuditReport) string {
	var first time.Time
	for _, g := range rep.Generations {
		for _, h := range g.Holders {
			if g.Current && !h.RepairAt.IsZero() && (first.IsZero() || h.RepairAt.Before(first)) {
				first = h.RepairAt
			}
		}
	}
	if first.IsZero() {
		return ""
	}
	return fmt.Sprintf("%d holders of the current generation unreachable (not counted as lost); "+
		"a repair opens at %s if one is still away", rep.Unreachable, first.Format(time.RFC3339))
}

func joinUints(v []uint64) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = fmt.Sprint(x)
	}
	return strings.Join(s, ", ")
}

func (n *Node) auditOne(ctx context.Context, gen uint64, holder peer.ID, digest []byte) AuditHolder {
	r := AuditHolder{PeerID: holder.String(), Result: AuditOK}
	cctx, cancel := context.WithTimeout(ctx, auditFetchTimeout)
	defer cancel()
	env, err := n.svc.Fetch(cctx, holder, gen)
	if err != nil {
		r.Result, r.Error = fetchResult(err, holder == n.host.ID()), err.Error()
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

// fetchResult classifies a failed fetch. Only an answer is evidence of
// loss: NOT_FOUND is missing; an envelope that came back and failed its
// check (it does not parse, or is bound to another cluster, owner,
// generation or holder), or a holder that answered it cannot read its
// copy (INTERNAL), is corrupt. A dial failure, timeout, reset, or a
// response that could not be read is unreachable. local is a fetch from
// this node's own store, which cannot be unreachable.
func fetchResult(err error, local bool) string {
	switch {
	case errors.Is(err, shares.ErrNotFound):
		return AuditMissing
	case errors.Is(err, shares.ErrForbidden), errors.Is(err, shares.ErrOwnerRemoved), errors.Is(err, shares.ErrOwnerLapsed), errors.Is(err, shares.ErrOwnerSuspended),
		errors.Is(err, shares.ErrRateLimited), errors.Is(err, shares.ErrWrongCluster),
		errors.Is(err, shares.ErrGenerationNotOpen), errors.Is(err, shares.ErrDuplicate):
		return AuditRefused
	case transportError(err):
		return AuditUnreachable
	case local:
		return AuditCorrupt
	case errors.Is(err, shares.ErrInternal):
		return AuditCorrupt
	case errors.Is(err, shares.ErrBadResponse) && !errors.Is(err, shares.ErrBadRequest):
		// A response was read: its envelope failed the checks. (A
		// response frame that could not be read wraps ErrBadRequest.)
		return AuditCorrupt
	default:
		return AuditUnreachable
	}
}

// transportError reports whether err is a failure to reach the holder or
// to hear its answer, rather than an answer.
func transportError(err error) bool {
	for _, target := range []error{
		context.DeadlineExceeded, context.Canceled, os.ErrDeadlineExceeded,
		io.EOF, io.ErrUnexpectedEOF, io.ErrClosedPipe, net.ErrClosed,
		network.ErrReset, network.ErrNoConn, network.ErrNoRemoteAddrs, network.ErrResourceScopeClosed,
		syscall.ECONNREFUSED, syscall.ECONNRESET, syscall.ECONNABORTED, syscall.EHOSTUNREACH,
		syscall.ENETUNREACH, syscall.EPIPE, syscall.ETIMEDOUT,
		shares.ErrClosed,
	} {
		if errors.Is(err, target) {
			return true
		}
	}
	var ne net.Error
	return errors.As(err, &ne)
}

// repair opens a new generation so that every owner re-shares (see Audit),
// and remembers it as the repair of losses.
func (n *Node) repair(ctx context.Context, mem *auditMemory, losses []lossKey) string {
	var open uint64
	n.view(func(l *generations.Ledger) {
		if g, ok := l.Open(); ok {
			open = g.Number
		}
	})
	if open != 0 {
		return fmt.Sprintf("generation %d is already open; this node re-shares into it", open)
	}
	now := n.now()
	res, err := n.applyResult(ctx, generations.NewOpenGeneration(now.Add(n.cfg.GenerationTimeout), now))
	switch {
	case errors.Is(err, generations.ErrGenerationOpen):
		return "a generation is already open; this node re-shares into it"
	case err != nil:
		// For example, the ledger refuses a same-membership generation
		// opened too soon after the last one. Nothing is remembered as
		// repaired: the next audit tries again.
		log.Warnw("repair: open a new generation", "err", err)
		return "could not open a new generation (the next audit retries): " + err.Error()
	}
	var g uint64
	if o, ok := decodeOpened(res); ok {
		g = o.Number
	} else {
		n.view(func(l *generations.Ledger) {
			if o, ok := l.Open(); ok {
				g = o.Number
			}
		})
	}
	var why []string
	for _, k := range losses {
		mem.repaired[k] = g
		if k.gen != 0 {
			why = append(why, fmt.Sprintf("%s lost its envelope", k.holder))
		} else {
			why = append(why, fmt.Sprintf("%s unreachable since %s", k.holder, k.since.Format(time.RFC3339)))
		}
	}
	log.Infow("repair: opened a new generation to re-share", "generation", g, "losses", why)
	n.events.publish(Event{Type: EventAuditFailed, Peer: n.host.ID(), Detail: fmt.Sprintf("opened generation %d to repair: %s", g, strings.Join(why, "; "))})
	return fmt.Sprintf("opened generation %d to re-share (%s)", g, strings.Join(why, "; "))
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
		if state, _ := n.LockState(); state != LockUnlocked {
			continue
		}
		ctx, cancel := context.WithTimeout(n.ctx, time.Minute)
		if _, err := n.Audit(ctx); err != nil {
			log.Debugw("audit", "err", err)
		}
		cancel()
	}
}
