package generations

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

func TestQueries(t *testing.T) {
	env := newRejectEnv(t) // 1 retired, 2 current (a, b, c), 3 open for d, r removed
	l := env.h.l
	a, b, d, r := env.a, env.b, env.d, env.r

	// Coverage (G6): a is escrowed in 2 with 3 of 3 holders, and is in open 3.
	cov := l.Coverage(a)
	if cov.Generation != 2 || cov.SharesHeld != 3 || cov.Threshold != 2 || len(cov.Holders) != 3 || !cov.CanUnlock {
		t.Fatalf("coverage of a: %+v", cov)
	}
	if cov.Open == nil || cov.Open.Generation != 3 || cov.Open.Held != 0 || cov.Open.Threshold != 3 {
		t.Fatalf("open coverage of a: %+v", cov.Open)
	}
	if len(cov.Live) != 2 {
		t.Fatalf("live escrows of a: %+v", cov.Live)
	}
	if cd := l.Coverage(d); cd.CanUnlock || cd.Generation != 0 || cd.Open == nil {
		t.Fatalf("coverage of joiner d: %+v", cd)
	}

	// Matrix.
	mx, ok := l.Matrix(2)
	if !ok || len(mx.Peers) != 3 || mx.Threshold != 2 {
		t.Fatalf("matrix: %+v", mx)
	}
	for i := range mx.Peers {
		if mx.Count[i] != 3 || !mx.Escrowed[i] {
			t.Fatalf("matrix row %d: %+v", i, mx)
		}
		for j := range mx.Peers {
			if !mx.Held[i][j] || !bytes.Equal(mx.Digests[i][j], digestOf(2, mx.Peers[i], mx.Peers[j])) {
				t.Fatalf("matrix cell %d,%d", i, j)
			}
		}
	}
	if _, ok := l.Matrix(99); ok {
		t.Fatal("matrix of unknown generation")
	}
	if dg, ok := l.ReceiptDigest(2, a, b); !ok || !bytes.Equal(dg, digestOf(2, a, b)) {
		t.Fatal("receipt digest")
	}

	// ServeAllowed: each refusal has its sentinel.
	checks := []struct {
		gen    uint64
		o, hd  peer.ID
		want   error
		reason string
	}{
		{2, a, b, nil, "current generation, receipt recorded"},
		{9, a, b, ErrUnknownGeneration, "unknown"},
		{1, a, b, ErrGenerationRetired, "retired"},
		{2, r, a, ErrOwnerRemoved, "removed owner"},
		{2, a, r, ErrHolderRemoved, "removed holder"},
		{2, d, a, ErrOwnerNotInGeneration, "owner not in generation"},
		{2, a, d, ErrHolderNotInGeneration, "holder not in generation"},
		{3, a, b, ErrNoReceipt, "no receipt yet"},
	}
	for _, ck := range checks {
		err := l.ServeAllowed(ck.gen, ck.o, ck.hd)
		if ck.want == nil && err != nil || ck.want != nil && !errors.Is(err, ck.want) {
			t.Errorf("%s: ServeAllowed = %v, want %v", ck.reason, err, ck.want)
		}
	}

	// EnvelopeLive: open and current generations before the receipt lands,
	// never for retired generations or removed parties.
	if !l.EnvelopeLive(3, d, a) || !l.EnvelopeLive(2, a, b) || l.EnvelopeLive(1, a, b) || l.EnvelopeLive(2, r, a) || l.EnvelopeLive(3, a, env.e) {
		t.Fatal("EnvelopeLive")
	}

	// Duties.
	du := l.Duties(a)
	if du.Open != 3 || len(du.PushTo) != 4 || du.Current != 0 || !du.NeedsKeyCheck {
		t.Fatalf("duties of a: %+v", du)
	}
	if len(du.DeleteGenerations) != 1 || du.DeleteGenerations[0] != 1 || len(du.DeleteOwners) != 1 || du.DeleteOwners[0] != r {
		t.Fatalf("sweep duties of a: %+v", du)
	}

	// Generations listing and Open/Current.
	gs := l.Generations()
	if len(gs) != 3 || gs[0].State != StateRetired || gs[1].State != StateCommitted || gs[2].State != StateOpen {
		t.Fatalf("generations: %+v", gs)
	}
	if g, _ := l.Generation(2); g.Escrowed != 3 || g.Receipts != 9 || len(g.Removals) != 1 || g.Removals[0] != r {
		t.Fatalf("generation 2: %+v", g)
	}
	// Returned slices are copies.
	gs[1].Members[0] = "x"
	if g, _ := l.Generation(2); g.Members[0] == "x" {
		t.Fatal("Generation returned a shared slice")
	}
	if j := l.Joining(); len(j) != 1 || j[0] != d {
		t.Fatalf("joining: %v", j)
	}
	if act := l.Active(); len(act) != 3 {
		t.Fatalf("active: %v", act)
	}
}

func TestDeterministicReplay(t *testing.T) {
	env := newRejectEnv(t)
	h := env.h
	// Add a rejected join, a removal that aborts, addresses and key checks,
	// and a few rejected commands, so the log covers every kind of entry.
	h.must(NewSetAddrs(env.a, []string{"/ip4/10.0.0.1/tcp/4001", "/ip4/10.0.0.1/udp/4001/quic-v1"}, h.tick()))
	h.must(NewRecordKeyCheck(env.a, []byte("kc-a"), h.tick()))
	_, _ = h.apply(NewRecordKeyCheck(env.a, []byte("kc-other"), h.tick()))
	h.must(NewRecordReceipts(h.fullReceipts(3, []peer.ID{env.a, env.d})[:3], h.tick()))
	h.now = h.now.Add(2 * time.Hour)
	h.must(NewAbortGeneration(3, h.now))
	h.must(NewRemoveMember(env.c, h.now.Add(time.Hour), h.tick()))
	g, _ := h.l.Open()
	h.must(NewRecordReceipts(h.fullReceipts(g.Number, g.Members), h.tick()))
	checkReplay(t, h.log)
	s1, _ := h.l.Snapshot()
	s2, _ := h.l.Snapshot()
	if !bytes.Equal(s1, s2) {
		t.Fatal("two snapshots of the same state differ")
	}
	for i := 1; i < len(h.log); i += 7 {
		checkRestoreAt(t, h.log, i)
	}
}

func checkRestoreAt(t *testing.T, log []stamped, at int) {
	t.Helper()
	want := replay(t, New(), log)
	snap := replay(t, New(), log[:at])
	r := New()
	if err := r.Restore(snap); err != nil {
		t.Fatal(err)
	}
	if got := replay(t, r, log[at:]); !bytes.Equal(got, want) {
		t.Fatalf("restore at %d + replay differs", at)
	}
}

func TestZeroLedgerUsable(t *testing.T) {
	var l Ledger
	k := keys(t, 1)[0]
	cmd := NewBootstrap(testCluster, k.id, t0)
	if err := Sign(cmd, k.priv, testCluster, 1); err != nil {
		t.Fatal(err)
	}
	b, _ := EncodeCommand(cmd)
	if _, err := l.Apply(t0.UnixNano(), b); err != nil {
		t.Fatal(err)
	}
	if len(l.Members()) != 1 {
		t.Fatal("zero ledger")
	}
}
