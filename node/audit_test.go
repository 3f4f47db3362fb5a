package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/p2pkey/p2pkey/generations"
	"github.com/p2pkey/p2pkey/shares"
)

// generationCount is the number of generations in n's ledger, of any
// state: it grows by one for every generation opened.
func generationCount(n *Node) int {
	var c int
	n.view(func(l *generations.Ledger) { c = len(l.Generations()) })
	return c
}

// holderResults returns holder's result in every generation of rep.
func holderResults(rep AuditReport, holder peer.ID) []AuditHolder {
	var out []AuditHolder
	for _, g := range rep.Generations {
		for _, h := range g.Holders {
			if h.PeerID == holder.String() {
				out = append(out, h)
			}
		}
	}
	return out
}

// checkUnreachable fails unless holder is reported unreachable (never
// corrupt) in every generation of rep, first seen at since (when set), and
// nothing was counted as lost.
func checkUnreachable(t *testing.T, what string, rep AuditReport, holder peer.ID, since time.Time) time.Time {
	t.Helper()
	hs := holderResults(rep, holder)
	if len(hs) == 0 {
		t.Fatalf("%s: holder %s not audited: %+v", what, holder, rep)
	}
	for _, h := range hs {
		if h.Result != AuditUnreachable {
			t.Fatalf("%s: holder is %q (%s), want unreachable", what, h.Result, h.Error)
		}
		if h.UnreachableSince.IsZero() || (!since.IsZero() && !h.UnreachableSince.Equal(since)) {
			t.Fatalf("%s: unreachable since %v, want %v", what, h.UnreachableSince, since)
		}
	}
	if rep.Lost != 0 || rep.Unreachable != 1 {
		t.Fatalf("%s: lost %d, unreachable %d; want 0 and 1", what, rep.Lost, rep.Unreachable)
	}
	return hs[0].UnreachableSince
}

// Acceptance 4 (issue 12), first half: a holder that is only down, whether
// it does not answer (a paused process: its read times out), resets the
// stream, or is closed, is reported unreachable and opens no generation
// within the grace period; once it has stayed away longer than the grace,
// one audit opens one repair generation, and the next opens none.
func TestAuditUnreachableHolderWaitsForGrace(t *testing.T) {
	nodes := testCluster(t, 3)
	waitUnlocked(t, nodes...)
	waitFullCoverage(t, nodes)
	a, c := nodes[0], nodes[2]
	idC := c.ID()
	gens := generationCount(a)

	// Paused: c holds the stream and never answers.
	stop := make(chan struct{})
	defer close(stop)
	c.host.SetStreamHandler(shares.ProtocolID, func(s network.Stream) {
		io.Copy(io.Discard, s)
		<-stop
		s.Reset()
	})
	rep, err := a.audit(ctxT(t, 1500*time.Millisecond), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	since := checkUnreachable(t, "paused holder", rep, idC, time.Time{})
	for _, h := range holderResults(rep, idC) {
		if want := since.Add(time.Hour); !h.RepairAt.IsZero() && !h.RepairAt.Equal(want) {
			t.Fatalf("repair at %v, want %v", h.RepairAt, want)
		}
	}
	if !strings.Contains(rep.Repair, "a repair opens at") {
		t.Fatalf("repair note: %q", rep.Repair)
	}

	// Resetting: c refuses every stream.
	c.host.SetStreamHandler(shares.ProtocolID, func(s network.Stream) { s.Reset() })
	rep, err = a.audit(ctxT(t, 10*time.Second), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	checkUnreachable(t, "resetting holder", rep, idC, since)

	// Closed.
	c.Close()
	rep, err = a.audit(ctxT(t, 10*time.Second), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	checkUnreachable(t, "closed holder", rep, idC, since)
	if got := generationCount(a); got != gens {
		t.Fatalf("audits within the grace opened %d generations", got-gens)
	}
	if last := a.Status().LastAudit; last == nil || last.Unreachable != 1 {
		t.Fatalf("status's last audit: %+v", last)
	}

	// Past the grace: one repair.
	before := current(a)
	rep, err = a.audit(ctxT(t, 20*time.Second), time.Nanosecond)
	if err != nil {
		t.Fatal(err)
	}
	checkUnreachable(t, "holder away past the grace", rep, idC, since)
	if got := generationCount(a); got != gens+1 || !strings.Contains(rep.Repair, "opened generation") {
		t.Fatalf("past the grace: %d new generations, repair %q; want 1", got-gens, rep.Repair)
	}
	// The same outage does not open a second one, whether the repair is
	// still open or has committed.
	if _, err := a.audit(ctxT(t, 10*time.Second), time.Nanosecond); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the repair generation to commit", 30*time.Second, func() bool { return current(a) > before })
	if _, err := a.audit(ctxT(t, 10*time.Second), time.Nanosecond); err != nil {
		t.Fatal(err)
	}
	if got := generationCount(a); got != gens+1 {
		t.Fatalf("one outage opened %d generations", got-gens)
	}
}

// Acceptance 4 (issue 12), second half: a holder whose stored envelope was
// tampered with is reported corrupt at once, and the repair generation
// commits with the owner escrowed in it.
func TestAuditRepairsTamperedEnvelope(t *testing.T) {
	nodes := testCluster(t, 3)
	waitUnlocked(t, nodes...)
	waitFullCoverage(t, nodes)
	a, c := nodes[0], nodes[2]
	before := current(a)

	env, err := c.store.Get(before, a.ID())
	if err != nil {
		t.Fatal(err)
	}
	env.Ciphertext[0] ^= 1
	if err := c.store.Delete(before, a.ID()); err != nil {
		t.Fatal(err)
	}
	if err := c.store.Put(before, a.ID(), env); err != nil {
		t.Fatal(err)
	}

	rep, err := a.audit(ctxT(t, 30*time.Second), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	hs := holderResults(rep, c.ID())
	if len(hs) != 1 || hs[0].Result != AuditCorrupt {
		t.Fatalf("tampered holder: %+v", hs)
	}
	if rep.Lost != 1 || rep.Unreachable != 0 || !strings.Contains(rep.Repair, "opened generation") {
		t.Fatalf("audit report: %+v", rep)
	}
	for _, h := range append(holderResults(rep, a.ID()), holderResults(rep, nodes[1].ID())...) {
		if h.Result != AuditOK {
			t.Fatalf("untouched holder: %+v", h)
		}
	}
	waitFor(t, "the repair to commit with the owner escrowed in it", 30*time.Second, func() bool {
		cur := current(a)
		var cov generations.Coverage
		a.view(func(l *generations.Ledger) { cov = l.Coverage(a.ID()) })
		return cur > before && cov.Generation == cur
	})
	rep, err = a.audit(ctxT(t, 30*time.Second), time.Hour)
	if err != nil || rep.Lost != 0 {
		t.Fatalf("audit after the repair: %+v, %v", rep, err)
	}
	for _, g := range rep.Generations {
		for _, h := range g.Holders {
			if g.Current && h.Result != AuditOK {
				t.Fatalf("after the repair, holder %s is %s", h.PeerID, h.Result)
			}
		}
	}
}

// The errors the shares client returns, as it wraps them, classified.
func TestAuditFetchResult(t *testing.T) {
	w := func(outer, inner error) error { return fmt.Errorf("%w: %w", outer, inner) }
	readFailed := func(cause error) error {
		// roundTrip → decodeResponse → readDelimited
		return fmt.Errorf("shares: response from X: %w", w(shares.ErrBadResponse, w(shares.ErrBadRequest, cause)))
	}
	for _, tc := range []struct {
		name  string
		err   error
		local bool
		want  string
	}{
		{"read timeout", readFailed(os.ErrDeadlineExceeded), false, AuditUnreachable},
		{"read timeout, context", fmt.Errorf("%w (%w)", context.DeadlineExceeded, readFailed(errors.New("i/o"))), false, AuditUnreachable},
		{"reset", readFailed(network.ErrReset), false, AuditUnreachable},
		{"closed without an answer", readFailed(errors.New("empty stream")), false, AuditUnreachable},
		{"dial", errors.New("shares: open stream to X: failed to dial: connection refused"), false, AuditUnreachable},
		{"not found", fmt.Errorf("%w (from X)", shares.ErrNotFound), false, AuditMissing},
		{"forbidden", fmt.Errorf("%w (from X)", shares.ErrForbidden), false, AuditRefused},
		{"holder cannot read its copy", fmt.Errorf("%w (from X): store", shares.ErrInternal), false, AuditCorrupt},
		{"envelope does not parse", w(shares.ErrBadResponse, shares.ErrInvalidEnvelope), false, AuditCorrupt},
		{"wrong binding", fmt.Errorf("%w: envelope from X is bound to another", shares.ErrBadResponse), false, AuditCorrupt},
		{"local store", errors.New("shares: stored envelope: bad"), true, AuditCorrupt},
		{"local missing", shares.ErrNotFound, true, AuditMissing},
	} {
		if got := fetchResult(tc.err, tc.local); got != tc.want {
			t.Errorf("%s (%v): %s, want %s", tc.name, tc.err, got, tc.want)
		}
	}
}

// One loss opens one repair: the audit memory keeps it until the loss is
// over, and lets it open again only if its generation aborted.
func TestAuditMemory(t *testing.T) {
	m := &auditMemory{since: map[string]time.Time{}, repaired: map[lossKey]uint64{}}
	x, y := "x", "y"
	report := func(results map[string]string) *AuditReport {
		g := AuditGeneration{Number: 5, Current: true}
		for p, r := range results {
			g.Holders = append(g.Holders, AuditHolder{PeerID: p, Result: r})
		}
		return &AuditReport{Generations: []AuditGeneration{g}}
	}
	live := func(uint64) bool { return true }
	t0 := time.Unix(1000, 0)
	grace := time.Minute

	// y is corrupt: due at once; x unreachable: not yet.
	losses := m.observe(report(map[string]string{x: AuditUnreachable, y: AuditCorrupt}), t0, grace, 5)
	if due := m.due(losses, live); len(due) != 1 || due[0] != (lossKey{holder: y, gen: 5}) {
		t.Fatalf("due at t0: %v", due)
	}
	m.repaired[lossKey{holder: y, gen: 5}] = 6
	// Past the grace: x is due, y is being repaired.
	losses = m.observe(report(map[string]string{x: AuditUnreachable, y: AuditCorrupt}), t0.Add(grace), grace, 5)
	due := m.due(losses, live)
	if len(due) != 1 || due[0] != (lossKey{holder: x, since: t0}) {
		t.Fatalf("due past the grace: %v", due)
	}
	m.repaired[due[0]] = 6
	losses = m.observe(report(map[string]string{x: AuditUnreachable, y: AuditCorrupt}), t0.Add(2*grace), grace, 5)
	if due := m.due(losses, live); len(due) != 0 {
		t.Fatalf("repaired losses due again: %v", due)
	}
	// The repair aborted: both are due again.
	if due := m.due(losses, func(uint64) bool { return false }); len(due) != 2 {
		t.Fatalf("after an abort: %v", due)
	}
	// x answers, then goes away again: a new outage, with its own grace.
	m.observe(report(map[string]string{x: AuditOK, y: AuditCorrupt}), t0.Add(3*grace), grace, 5)
	if _, ok := m.since[x]; ok {
		t.Fatal("x answered but is still remembered unreachable")
	}
	t1 := t0.Add(4 * grace)
	rep := report(map[string]string{x: AuditUnreachable, y: AuditCorrupt})
	losses = m.observe(rep, t1, grace, 5)
	if due := m.due(losses, live); len(due) != 0 {
		t.Fatalf("a new outage is due before its grace: %v", due)
	}
	for _, h := range rep.Generations[0].Holders {
		if h.PeerID == x && (!h.UnreachableSince.Equal(t1) || !h.RepairAt.Equal(t1.Add(grace))) {
			t.Fatalf("new outage: %+v", h)
		}
	}
	// A new current generation ends y's loss.
	m.observe(report(map[string]string{x: AuditUnreachable}), t1, grace, 6)
	if _, ok := m.repaired[lossKey{holder: y, gen: 5}]; ok {
		t.Fatal("a loss of a past generation is still remembered")
	}
}
