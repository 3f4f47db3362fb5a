package node

import (
	"bytes"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/p2pkey/p2pkey/generations"
)

// Issue 12 (the long chaos run's one failure, holder-disk-loss seed
// 1648789231): owner O is escrowed in a new generation with exactly its
// threshold of shares, its own among them, and then loses its disk's share
// store. The new generation alone can no longer give K back. The ledger
// keeps the previous generation, where O has a full set, until O is
// escrowed with a margin (rule G4), and O, restarted, unlocks from it with
// the same K. Without the fallback O stays locked at 2 of 3.
func TestUnlockFallsBackToRetainedGeneration(t *testing.T) {
	var owner, skip atomic.Value
	owner.Store(peer.ID(""))
	skip.Store(peer.ID(""))
	var never atomic.Value
	never.Store(peer.ID(""))
	edit := cuttable(t, &never, func(self peer.ID, c *Config) {
		c.hooks.dropPush = func(to peer.ID) bool {
			return self == owner.Load().(peer.ID) && to == skip.Load().(peer.ID)
		}
	})
	nodes := cuttableCluster(t, 4, edit)
	leader := leaderOf(t, nodes)
	fol := followers(nodes, leader)
	o, h := fol[0], fol[1]
	keyBefore := mustKey(t, o, "app")
	var old uint64
	leader.view(func(l *generations.Ledger) {
		g, _ := l.Newest()
		old = g.Number
	})
	owner.Store(o.ID())
	skip.Store(h.ID())

	// A re-share: every member escrows again; O's push to H is dropped, so
	// O has 3 of 4 receipts, exactly t.
	now := time.Now()
	if err := leader.apply(ctxT(t, 10*time.Second), generations.NewOpenGeneration(now.Add(time.Minute), now)); err != nil {
		t.Fatal(err)
	}
	var cov generations.Coverage
	var oldState generations.GenerationState
	waitFor(t, "the re-share to commit with O escrowed in it", 30*time.Second, func() bool {
		ok := false
		leader.view(func(l *generations.Ledger) {
			cov = l.Coverage(o.ID())
			g, _ := l.Newest()
			ok = g.Number > old && g.State == generations.StateCommitted && cov.Generation == g.Number
			if og, found := l.Generation(old); found {
				oldState = og.State
			}
		})
		return ok
	})
	if cov.SharesHeld != 3 || cov.Threshold != 3 {
		t.Fatalf("O's escrow in generation %d: %d shares, threshold %d; want exactly 3 of 3", cov.Generation, cov.SharesHeld, cov.Threshold)
	}
	if oldState != generations.StateCommitted {
		t.Fatalf("generation %d is %v; G4 must keep it while O has no margin", old, oldState)
	}

	// O loses its share store (its own share of every generation) and
	// restarts.
	cfg := o.cfg
	cfg.Bootstrap, cfg.Join = false, ""
	o.Close()
	if err := os.Remove(cfg.sharesPath()); err != nil {
		t.Fatal(err)
	}
	o2 := startNode(t, cfg)
	keyAfter := mustKey(t, o2, "app")
	if !bytes.Equal(keyBefore, keyAfter) {
		t.Fatal("O unlocked with another K")
	}
	_, p := o2.LockState()
	if p.Generation != old {
		t.Fatalf("O unlocked from generation %d, want the retained generation %d", p.Generation, old)
	}
}
