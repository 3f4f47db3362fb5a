package generations

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// receiptsFrom returns owner's receipts in gen from each of holders.
func receiptsFrom(h *harness, gen uint64, owner peer.ID, holders ...peer.ID) []Receipt {
	var rs []Receipt
	for _, hd := range holders {
		rs = append(rs, signed(h.tb, testCluster, gen, owner, hd, digestOf(gen, owner, hd)))
	}
	return rs
}

// TestRetirementKeepsMargin is issue 12's holder-disk-loss failure (chaos
// seed 1648789231) at the ledger: owner x is escrowed in the new generation
// with exactly t receipts, its self-receipt among them. If the previous
// generation, where every member holds x's share, retired then, losing x's
// own store would leave t-1 shares of x anywhere: K lost. G4 keeps it until
// x is escrowed with margin (min(t+1, |M|) receipts of its split) in a
// newer generation, then retires it.
func TestRetirementKeepsMargin(t *testing.T) {
	for _, tc := range []struct {
		name string
		n    int // members; t = n/2+1
		// margin is how many receipts x needs in generation 2: t+1, or
		// every member when that is fewer.
		margin int
	}{
		{"three members: margin is every member", 3, 3},
		{"five members: margin is t+1", 5, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, ids := cluster(t, tc.n)
			x, others := ids[len(ids)-1], ids[:len(ids)-1]
			h.must(NewOpenGeneration(h.now.Add(time.Hour), h.tick()))
			g2, _ := h.l.Open()
			th := g2.Threshold
			var rs []Receipt
			for _, o := range others {
				rs = append(rs, receiptsFrom(h, 2, o, ids...)...) // full: with margin
			}
			// x: its self-receipt and t-1 others, exactly t.
			rs = append(rs, receiptsFrom(h, 2, x, append([]peer.ID{x}, others[:th-1]...)...)...)
			res := h.must(NewRecordReceipts(rs, h.tick()))
			if res.Committed != 2 || len(res.Retired) != 0 {
				t.Fatalf("generation 2 must commit and keep 1 for x: %+v", res)
			}
			if cov := h.l.Coverage(x); cov.Generation != 2 || cov.SharesHeld != th {
				t.Fatalf("x escrowed in 2 with exactly t: %+v", cov)
			}
			if bl := h.l.RetentionBlockers(1); !slices.Equal(bl, []peer.ID{x}) {
				t.Fatalf("blockers of 1: %v, want x only", bl)
			}
			if _, err := h.apply(NewRetireGeneration(1, h.tick())); !errors.Is(err, ErrRetentionRequired) {
				t.Fatalf("retire 1 while x has no margin in 2: %v", err)
			}
			// x's own store is lost: in 2 it has t-1 shares left, but in 1
			// every holder still serves it a share.
			for _, hd := range ids {
				if err := h.l.ServeAllowed(1, x, hd); err != nil {
					t.Fatalf("x's share of generation 1 at %s: %v", hd, err)
				}
			}
			// Late receipts into the current generation, one at a time:
			// generation 1 goes exactly when x reaches its margin.
			held := th
			for _, hd := range others[th-1:] {
				res = h.must(NewRecordReceipts(receiptsFrom(h, 2, x, hd), h.tick()))
				held++
				if held < tc.margin {
					if len(res.Retired) != 0 {
						t.Fatalf("%d of %d receipts: retired %v", held, tc.margin, res.Retired)
					}
					continue
				}
				if !slices.Equal(res.Retired, []uint64{1}) {
					t.Fatalf("%d receipts, the margin: generation 1 must retire: %+v", held, res)
				}
				break
			}
			if g1, _ := h.l.Generation(1); g1.State != StateRetired {
				t.Fatalf("generation 1: %+v", g1)
			}
			checkReplay(t, h.log)
		})
	}
}

// TestRetirementMarginFallsBack: an owner with a margin in no committed
// generation holds back nothing older than its newest escrow (today's rule),
// so that nothing is kept forever because of it; and the retention bound
// still retires a generation kept only for a margin, lapsing nobody.
func TestRetirementMarginFallsBack(t *testing.T) {
	t.Run("no margin anywhere", func(t *testing.T) {
		h, ids := cluster(t, 3)
		x := ids[2]
		// Generation 2 commits with x holding exactly t (2 of 3); then
		// generation 3 likewise: x has a margin in 1 only.
		for _, gen := range []uint64{2, 3} {
			h.must(NewOpenGeneration(h.now.Add(time.Hour), h.tick()))
			rs := h.fullReceipts(gen, ids[:2])
			rs = append(rs, receiptsFrom(h, gen, ids[0], x)...)
			rs = append(rs, receiptsFrom(h, gen, ids[1], x)...)
			rs = append(rs, receiptsFrom(h, gen, x, x, ids[0])...)
			if res := h.must(NewRecordReceipts(rs, h.tick())); res.Committed != gen || len(res.Retired) != 0 {
				t.Fatalf("generation %d: %+v (1 is kept: x's margin is there)", gen, res)
			}
		}
		// x's holder b is removed: the margin in 1 goes with b's receipts,
		// and x has a margin nowhere; its newest escrow, 3 (x and a), is
		// what G4 keeps, so 1 and 2 retire.
		res := h.must(NewRemoveMember(ids[1], h.now.Add(time.Hour), h.tick()))
		if !slices.Equal(res.Retired, []uint64{1, 2}) {
			t.Fatalf("remove b: %+v", res)
		}
		if cov := h.l.Coverage(x); cov.Generation != 3 || !cov.CanUnlock {
			t.Fatalf("x: %+v", cov)
		}
	})
	t.Run("the bound overrides", func(t *testing.T) {
		h, ids := clusterWith(t, 3, 1)
		x := ids[2]
		for _, gen := range []uint64{2, 3} {
			h.must(NewOpenGeneration(h.now.Add(time.Hour), h.tick()))
			rs := h.fullReceipts(gen, ids[:2])
			rs = append(rs, receiptsFrom(h, gen, ids[0], x)...)
			rs = append(rs, receiptsFrom(h, gen, ids[1], x)...)
			rs = append(rs, receiptsFrom(h, gen, x, x, ids[0])...)
			res := h.must(NewRecordReceipts(rs, h.tick()))
			want := []uint64(nil)
			if gen == 3 {
				// 1, x's only margin, is 2 behind 3, bound 1: the bound
				// retires it. Then x has a margin nowhere and its newest
				// escrow, 3, counts: 2 goes by G4 (it held only t of x's
				// shares, no better than 3).
				want = []uint64{1, 2}
			}
			if res.Committed != gen || !slices.Equal(res.Retired, want) || len(res.Lapsed) != 0 {
				t.Fatalf("generation %d: %+v, want retired %v and nobody lapsed", gen, res, want)
			}
		}
		if m, _ := h.l.Member(x); m.Status != StatusActive || !h.l.Coverage(x).CanUnlock {
			t.Fatalf("x: %+v", m)
		}
	})
}
